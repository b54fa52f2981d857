"""Dual-channel call recordings, voiced with espeak-ng.

The emulator knows who said what and when, but has no audio. For a call created with
``Record=true`` it voices each utterance with Debian's ``espeak-ng`` and lays the clips on a silent
timeline: a 2-channel, 16-bit PCM WAV at espeak-ng's own rate (22050 Hz), channel 1 our caller,
channel 2 the target, like Twilio's dual-channel recordings. Each clip starts where the utterance
started on the call's clock. At a compressed ``speech_scale`` the clips are voiced faster
(``words_per_minute``) but still outlast the compressed turns, so clips of one speaker can
overlap: the later one then overwrites the earlier where they meet.

Bounds: each utterance is cut at ``MAX_TEXT_CHARS`` characters, at most ``MAX_UTTERANCES`` are
voiced, at most ``MAX_CONCURRENT_SYNTHESES`` espeak-ng processes run at once (each in a worker
thread, with a timeout), and a recording lasts at most ``MAX_SECONDS``. Only the standard library is
used (``wave``, ``array``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import wave
from array import array
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
CHANNEL_OF_SPEAKER = {"caller": 0, "target": 1}
MAX_TEXT_CHARS = 600
MAX_UTTERANCES = 300
MAX_SECONDS = 15 * 60
MAX_CONCURRENT_SYNTHESES = 2
SYNTHESIS_TIMEOUT_SECONDS = 30
NORMAL_WORDS_PER_MINUTE = 175  # espeak-ng's default; close to the emulator's 0.33 s a word
MAX_WORDS_PER_MINUTE = 450

_synthesis_slots = threading.BoundedSemaphore(MAX_CONCURRENT_SYNTHESES)


class RecordingError(Exception):
    """espeak-ng failed or gave something that is not 16-bit mono PCM."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def words_per_minute(speech_scale: float) -> int:
    """espeak-ng's speed for a speech scale: faster speech for a compressed clock, within reason."""
    return int(min(MAX_WORDS_PER_MINUTE, max(80, NORMAL_WORDS_PER_MINUTE / max(speech_scale, 1e-6))))


def synthesize(text: str, *, wpm: int = NORMAL_WORDS_PER_MINUTE) -> array:
    """One utterance as 16-bit mono samples at ``SAMPLE_RATE``. Blocking: run it in a thread."""
    command = ["espeak-ng", "--stdout", "-v", "en-us", "-s", str(wpm), "--stdin"]
    with _synthesis_slots:
        # The text goes through stdin, so nothing in it can be read as an option.
        result = subprocess.run(
            command, input=text[:MAX_TEXT_CHARS].encode("utf-8"), capture_output=True,
            timeout=SYNTHESIS_TIMEOUT_SECONDS, check=False,
        )
    if result.returncode != 0:
        raise RecordingError(f"espeak-ng exited with {result.returncode}: {result.stderr[:200]!r}")
    return _samples_of_wav(result.stdout)


def write_two_channel_wav(path: Path, clips: list[tuple[float, str, array]], *, min_seconds: float = 0.0) -> float:
    """Write ``clips`` (start seconds, speaker, samples) to a 2-channel WAV; returns its duration."""
    end_seconds = max([min_seconds] + [start + len(samples) / SAMPLE_RATE for start, _, samples in clips])
    frames = int(min(end_seconds, MAX_SECONDS) * SAMPLE_RATE)
    channels = [array("h", bytes(2 * frames)), array("h", bytes(2 * frames))]
    for start, speaker, samples in clips:
        offset = int(start * SAMPLE_RATE)
        if offset >= frames:
            continue
        end = min(offset + len(samples), frames)
        channels[CHANNEL_OF_SPEAKER[speaker]][offset:end] = samples[: end - offset]
    interleaved = array("h", bytes(4 * frames))
    interleaved[0::2] = channels[0]
    interleaved[1::2] = channels[1]
    if sys.byteorder == "big":
        interleaved.byteswap()

    partial = path.with_name(path.name + ".part")
    with wave.open(str(partial), "wb") as output:
        output.setnchannels(2)
        output.setsampwidth(2)
        output.setframerate(SAMPLE_RATE)
        output.writeframes(interleaved.tobytes())
    os.replace(partial, path)
    return frames / SAMPLE_RATE


async def build_recording(
    speech: list[tuple[float, str, str]], path: Path, *, speech_scale: float, min_seconds: float = 0.0
) -> float:
    """Voice ``speech`` ((start seconds, "caller" | "target", text)) and write the WAV to ``path``.
    Returns the recording's duration in seconds; raises ``RecordingError``."""
    wpm = words_per_minute(speech_scale)
    kept = [(start, speaker, text) for start, speaker, text in speech[:MAX_UTTERANCES] if text.strip()]
    if len(speech) > MAX_UTTERANCES:
        log.warning("Recording %s: only the first %d utterances are voiced", path.name, MAX_UTTERANCES)
    slots = asyncio.Semaphore(MAX_CONCURRENT_SYNTHESES)  # keep the thread pool free for others

    async def voice(text: str) -> array:
        async with slots:
            return await asyncio.to_thread(synthesize, text, wpm=wpm)

    try:
        voiced = await asyncio.gather(*(voice(text) for _, _, text in kept))
    except (OSError, subprocess.SubprocessError) as error:
        raise RecordingError(f"espeak-ng failed: {error!r}") from error
    clips = [(start, speaker, samples) for (start, speaker, _), samples in zip(kept, voiced)]
    return await asyncio.to_thread(write_two_channel_wav, path, clips, min_seconds=min_seconds)


def _samples_of_wav(data: bytes) -> array:
    """The samples of a mono 16-bit PCM WAV at ``SAMPLE_RATE``. espeak-ng writing to a pipe cannot
    go back to fill in the sizes, so the data chunk is read to the end of the bytes."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RecordingError("espeak-ng did not produce a WAV")
    position, layout = 12, None
    while position + 8 <= len(data):
        chunk_id, size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        body = position + 8
        if chunk_id == b"fmt ":
            layout = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk_id == b"data":
            if layout is None or layout[0] != 1 or layout[1] != 1 or layout[2] != SAMPLE_RATE or layout[5] != 16:
                raise RecordingError(f"espeak-ng produced an unexpected format {layout}")
            pcm = data[body:body + min(size, len(data) - body)]
            samples = array("h")
            samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
            if sys.byteorder == "big":
                samples.byteswap()
            return samples
        position = body + size + (size % 2)
    raise RecordingError("espeak-ng's WAV has no data")
