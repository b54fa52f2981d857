// Live pages: apply what the server pushes over a websocket to a page rendered from the database.
// On every (re)connect, and whenever a sequence number is skipped, the page asks for everything
// after the last turn and tool invocation it holds, so a flaky connection loses nothing and shows
// nothing twice.
(function () {
  "use strict";
  var root = document.querySelector("[data-live]");
  if (!root) return;
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + location.host + root.dataset.live;
  var turnSeq = parseInt(root.dataset.turnSeq || "0", 10);
  var toolSeq = parseInt(root.dataset.toolSeq || "0", 10);
  var delay = 500;
  var socket = null;
  var label = root.querySelector(".live-label");

  function setState(state, text) {
    root.dataset.state = state;
    if (label) label.textContent = text;
  }

  function resume() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resume", turn_seq: turnSeq, tool_seq: toolSeq }));
    }
  }

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function append(html) {
    var list = document.getElementById("transcript");
    if (!list) return;
    list.appendChild(fragment(html));
    var empty = document.getElementById("transcript-empty");
    if (empty) empty.hidden = true;
  }

  function replace(id, html) {
    var old = document.getElementById(id);
    if (!old) return;
    var fresh = fragment(html);
    old.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
  }

  var handlers = {
    turn: function (m) {
      if (m.seq <= turnSeq) return; // already shown
      if (m.seq !== turnSeq + 1) return resume(); // a gap: fetch what is missing, in order
      append(m.html);
      turnSeq = m.seq;
      if (m.latency_ms != null) {
        var latency = document.getElementById("live-latency");
        if (latency) latency.textContent = m.latency_ms + " ms";
      }
    },
    tool: function (m) {
      if (m.seq <= toolSeq) return;
      if (m.seq !== toolSeq + 1) return resume();
      append(m.html);
      toolSeq = m.seq;
    },
    replace: function (m) { replace(m.id, m.html); }
  };

  function connect() {
    socket = new WebSocket(url);
    window.assureLive = { socket: socket, state: function () { return { turnSeq: turnSeq, toolSeq: toolSeq }; } };
    socket.onopen = function () {
      delay = 500;
      setState("live", "Live");
      resume();
    };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      var handle = handlers[message.type];
      if (handle) handle(message);
    };
    socket.onclose = function (event) {
      if (event.code === 4403) {
        setState("refused", "Live updates are not available for this page.");
        return;
      }
      setState("reconnecting", "Reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  connect();
})();
