// Authoring forms: show only the fields that matter, and edit script steps and criteria as rows.
//
// Progressive enhancement: without JavaScript every field shows and steps/criteria are edited as
// JSON in their textareas. With it, each [data-editor] textarea is hidden behind rows of inputs and
// rewritten (as JSON) on every change, so the form posts exactly what the textarea would. The
// server validates everything; nothing here is a rule, only a way of typing.
(function () {
  "use strict";

  // Fields shown only for some values of other fields ----------------------------------------------
  // data-show-when="kind=openai_chat,http_json;direction=inbound": all conditions must hold.

  function controlValue(form, name) {
    var control = form.elements[name];
    if (!control) return null;
    if (control instanceof RadioNodeList) return control.value;
    return control.value;
  }

  function applyShowWhen(form) {
    form.querySelectorAll("[data-show-when]").forEach(function (input) {
      var wrapper = input.closest(".field") || input;
      var visible = input.dataset.showWhen.split(";").every(function (condition) {
        var parts = condition.split("=");
        var value = controlValue(form, parts[0]);
        return value === null || parts[1].split(",").indexOf(value) !== -1;
      });
      // A field with an error message always shows: the user must see what to fix.
      wrapper.hidden = !visible && !wrapper.classList.contains("has-error");
    });
  }

  document.querySelectorAll("form").forEach(function (form) {
    if (!form.querySelector("[data-show-when]")) return;
    applyShowWhen(form);
    form.addEventListener("change", function () { applyShowWhen(form); });
  });

  // Small DOM helpers -------------------------------------------------------------------------------

  var lastId = 0;
  function uniqueId() { lastId += 1; return "editor-input-" + lastId; }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined) return;
      if (key === "text") node.textContent = value;
      else if (typeof value !== "string") node[key] = value; // properties: hidden, checked
      else node.setAttribute(key, value);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function select(options, value, attrs) {
    var node = el("select", attrs);
    options.forEach(function (option) {
      node.appendChild(el("option", { value: option[0], text: option[1] }));
    });
    node.value = value === undefined || value === null ? options[0][0] : String(value);
    return node;
  }

  function button(text, label, onClick, className) {
    var node = el("button", { type: "button", class: className || "btn secondary small", text: text, "aria-label": label });
    node.addEventListener("click", onClick);
    return node;
  }

  // Whole numbers go to JSON as numbers; anything else stays text, for the server to explain.
  function numberOrText(text) {
    return /^\s*-?\d+\s*$/.test(text) ? parseInt(text, 10) : text;
  }

  // A row editor over a JSON-list textarea ---------------------------------------------------------
  // spec: noun and emptyText (words); errorPattern (finds the row number in a server message);
  //   parse(item) -> row data, or null when the item cannot be shown as a row;
  //   blank() -> row data for a new row; kindControl(row data, onChange) -> the kind select;
  //   buildFields(row data, row) -> the inputs for the row's selected kind;
  //   current(row) -> row data from the inputs now; read(row) -> the JSON item.

  function rowEditor(textarea, spec) {
    var field = textarea.closest(".field");
    var label = field && field.querySelector("label[for='" + textarea.id + "']");
    if (label && !label.id) label.id = textarea.id + "_label";
    var list = el("ol", { class: "editor-rows" });
    var empty = el("p", { class: "editor-empty", text: spec.emptyText });
    var addButton = button("Add " + spec.noun, null, function () {
      var row = addRow(spec.blank());
      sync();
      var first = row.querySelector("select, input, textarea");
      if (first) first.focus();
    }, "btn secondary small");
    var jsonToggle = button("Edit as JSON", null, function () { showJson(true); }, "btn link");
    var editor = el("div", { class: "editor", role: "group" }, [list, empty, el("div", { class: "editor-footer" }, [addButton, jsonToggle])]);
    if (label) editor.setAttribute("aria-labelledby", label.id);
    var note = el("p", { class: "help", hidden: true });
    var backToRows = button("Use the " + spec.noun + " editor", null, function () { tryRows(true); }, "btn link");
    var jsonFooter = el("div", { class: "editor-footer", hidden: true }, [backToRows]);
    textarea.after(editor, note, jsonFooter);

    function rows() { return Array.prototype.slice.call(list.querySelectorAll(".editor-row")); }

    function renumber() {
      rows().forEach(function (row, index) {
        var n = index + 1;
        row.querySelectorAll("[data-label]").forEach(function (node) {
          node.setAttribute("aria-label", node.dataset.label.replace("#", n));
        });
      });
      empty.hidden = rows().length > 0;
    }

    function sync() {
      var items = rows().map(function (row) { return spec.read(row); });
      textarea.value = items.length ? JSON.stringify(items, null, 2) : "";
      renumber();
    }

    function addRow(data) {
      var row = el("li", { class: "editor-row" });
      var fields = el("div", { class: "row-fields" });
      var tools = el("div", { class: "row-tools" }, [
        button("↑", null, function () { if (row.previousElementSibling) { list.insertBefore(row, row.previousElementSibling); sync(); } }),
        button("↓", null, function () { if (row.nextElementSibling) { list.insertBefore(row.nextElementSibling, row); sync(); } }),
        button("✕", null, function () { row.remove(); sync(); }, "btn secondary small")
      ]);
      tools.children[0].dataset.label = "Move " + spec.noun + " # up";
      tools.children[1].dataset.label = "Move " + spec.noun + " # down";
      tools.children[2].dataset.label = "Remove " + spec.noun + " #";
      row.appendChild(spec.kindControl(data, function () {
        // Another kind: new inputs, keeping what was typed where the new kind has the same input.
        fields.replaceChildren(spec.buildFields(spec.current(row), row));
        sync();
      }));
      fields.appendChild(spec.buildFields(data, row));
      row.appendChild(fields);
      row.appendChild(tools);
      list.appendChild(row);
      return row;
    }

    function showJson(focus) {
      sync();
      editor.hidden = true;
      textarea.hidden = false;
      jsonFooter.hidden = false;
      if (focus) textarea.focus();
    }

    // Rows from the textarea's JSON; stays on the JSON when it cannot be shown as rows.
    function tryRows(focus) {
      var text = textarea.value.trim();
      var items;
      try {
        items = text ? JSON.parse(text) : [];
      } catch (error) {
        items = null;
      }
      var data = Array.isArray(items) ? items.map(spec.parse) : null;
      if (!data || data.some(function (d) { return d === null; })) {
        note.textContent = "This JSON cannot be shown as " + spec.noun + " rows; edit it here, or fix it and use the " + spec.noun + " editor.";
        note.hidden = false;
        showJson(false);
        return false;
      }
      note.hidden = true;
      list.replaceChildren();
      data.forEach(addRow);
      textarea.hidden = true;
      jsonFooter.hidden = true;
      editor.hidden = false;
      sync();
      markErrors();
      if (focus) {
        var first = list.querySelector("select, input, textarea") || addButton;
        first.focus();
      }
      return true;
    }

    // "step 3: …" from the server marks row 3.
    function markErrors() {
      if (!field) return;
      field.querySelectorAll(".field-errors li").forEach(function (item) {
        var match = spec.errorPattern.exec(item.textContent);
        var row = match && rows()[parseInt(match[1], 10) - 1];
        if (row) row.classList.add("row-error");
      });
    }

    editor.addEventListener("input", sync);
    editor.addEventListener("change", sync);
    // Keep the textarea current even if a change event was missed (e.g. autofill).
    if (textarea.form) textarea.form.addEventListener("submit", function () { if (!editor.hidden) sync(); });
    tryRows(false);
  }

  // Script steps -------------------------------------------------------------------------------------

  var STEP_LABELS = {
    say: "Say",
    press: "Press keys",
    pause_ms: "Pause (ms)",
    expect: "Expect (regex)",
    end_call: "End call"
  };
  var STEP_PLACEHOLDERS = {
    say: "What the caller says",
    press: "Digits: 0-9 * # (w waits ½ s)",
    pause_ms: "Milliseconds, e.g. 500",
    expect: "Regex the target's reply must match, e.g. (?i)how can I help"
  };

  function scriptEditor(textarea) {
    var kinds = JSON.parse(textarea.dataset.kinds || "[]");
    rowEditor(textarea, {
      noun: "step",
      emptyText: "No steps: the LLM caller follows the narrative. Add steps for a deterministic caller.",
      errorPattern: /step (\d+):/,
      blank: function () { return { kind: "say", value: "" }; },
      parse: function (step) {
        if (!step || typeof step !== "object" || Array.isArray(step)) return null;
        var keys = Object.keys(step);
        if (keys.length !== 1 || kinds.indexOf(keys[0]) === -1) return null;
        var value = step[keys[0]];
        if (keys[0] === "end_call") return value === true ? { kind: "end_call", value: true } : null;
        if (typeof value !== "string" && typeof value !== "number") return null;
        return { kind: keys[0], value: value };
      },
      kindControl: function (data, onChange) {
        var control = select(kinds.map(function (k) { return [k, STEP_LABELS[k] || k]; }), data.kind, { "data-role": "kind", "data-label": "Step # kind" });
        control.addEventListener("change", onChange);
        return control;
      },
      current: function (row) {
        var input = row.querySelector("[data-role=value]");
        return { value: input ? input.value : "" };
      },
      buildFields: function (data, row) {
        var kind = row.querySelector("[data-role=kind]").value;
        if (kind === "end_call") return el("span", { class: "muted", text: "Hang up (must be the last step)" });
        var value = data.value;
        return el("input", {
          type: kind === "pause_ms" ? "number" : "text",
          min: kind === "pause_ms" ? "1" : null,
          class: "wide" + (kind === "expect" || kind === "press" ? " mono" : ""),
          value: value === true || value === undefined || value === null ? "" : String(value),
          placeholder: STEP_PLACEHOLDERS[kind] || "",
          "data-role": "value",
          "data-label": "Step # value"
        });
      },
      read: function (row) {
        var kind = row.querySelector("[data-role=kind]").value;
        var step = {};
        if (kind === "end_call") {
          step[kind] = true;
        } else {
          var input = row.querySelector("[data-role=value]");
          var text = input ? input.value : "";
          step[kind] = kind === "pause_ms" ? numberOrText(text) : text;
        }
        return step;
      }
    });
  }

  // Criteria -----------------------------------------------------------------------------------------

  var CRITERION_LABELS = {
    contains: "Says text",
    regex: "Matches regex",
    tool_called: "Tool called",
    tool_not_called: "Tool not called",
    ended_by: "Ended by",
    max_latency_ms: "Max latency",
    max_duration_ms: "Max duration",
    min_turns: "At least N turns",
    max_turns: "At most N turns",
    llm_judge: "LLM judge (rule in words)"
  };
  var FIELD_LABELS = {
    speaker: "Speaker", text: "Text", pattern: "Regex", tool: "Tool name", arguments: "Arguments (JSON object)",
    percentile: "Percentile", ms: "Milliseconds", n: "Turns", rule: "Rule", case_sensitive: "Case sensitive"
  };

  function criterionInput(name, value) {
    if (name === "speaker") {
      return select([["", "—"], ["caller", "Caller (simulated)"], ["target", "Target (your agent)"]], value || "", {});
    }
    if (name === "percentile") return select([["p50", "p50"], ["p90", "p90"], ["max", "max"]], value || "p90", {});
    if (name === "case_sensitive") return el("input", { type: "checkbox", checked: value === true });
    if (name === "rule") return el("textarea", { rows: "2", text: value || "", placeholder: "e.g. The agent confirms the booking date and time before ending the call." });
    if (name === "ms" || name === "n") return el("input", { type: "number", min: name === "n" ? "0" : "1", value: value === undefined ? "" : String(value) });
    if (name === "arguments") {
      return el("input", { type: "text", class: "mono", value: value === undefined ? "" : (typeof value === "string" ? value : JSON.stringify(value)), placeholder: '{"order_id": "A123"}' });
    }
    return el("input", { type: "text", class: name === "pattern" ? "mono" : "", value: value === undefined ? "" : String(value) });
  }

  function criteriaEditor(textarea) {
    var schema = JSON.parse(textarea.dataset.kinds || "{}");
    var kinds = Object.keys(schema);
    function fieldsOf(kind) { return schema[kind] ? schema[kind].required.concat(schema[kind].optional) : []; }

    rowEditor(textarea, {
      noun: "criterion",
      emptyText: "No criteria yet. Add what a passing conversation must show.",
      errorPattern: /criterion (\d+)/,
      blank: function () { return { name: "", kind: kinds[0] || "contains" }; },
      parse: function (item) {
        if (!item || typeof item !== "object" || Array.isArray(item) || !schema[item.kind]) return null;
        var allowed = ["name", "kind"].concat(fieldsOf(item.kind));
        // Keys the editor has no input for would be silently dropped: keep those in JSON.
        if (Object.keys(item).some(function (key) { return allowed.indexOf(key) === -1; })) return null;
        return item;
      },
      kindControl: function (data, onChange) {
        var control = select(kinds.map(function (k) { return [k, CRITERION_LABELS[k] || k]; }), data.kind, { "data-role": "kind", "data-label": "Criterion # kind" });
        control.addEventListener("change", onChange);
        return control;
      },
      current: function (row) { return this.read(row); },
      buildFields: function (data, row) {
        var kind = row.querySelector("[data-role=kind]").value;
        var wrap = el("div", { style: "display: contents" });
        var nameInput = el("input", { type: "text", value: data.name || "", "data-role": "name", placeholder: "e.g. confirms booking" });
        wrap.appendChild(el("div", {}, [el("label", { text: "Name" }), nameInput]));
        fieldsOf(kind).forEach(function (name) {
          var input = criterionInput(name, data[name]);
          input.dataset.field = name;
          var optional = schema[kind].optional.indexOf(name) !== -1;
          var labelText = FIELD_LABELS[name] || name;
          var cell;
          if (input.type === "checkbox") {
            cell = el("label", { class: "check" }, [input, document.createTextNode(" " + labelText)]);
          } else {
            cell = el("div", { class: name === "rule" || name === "text" || name === "pattern" ? "wide" : "" }, [
              el("label", { text: labelText + (optional ? " (optional)" : "") }), input
            ]);
          }
          wrap.appendChild(cell);
        });
        // Tie each visible label to its input.
        wrap.querySelectorAll("div > label").forEach(function (label) {
          var input = label.nextElementSibling;
          if (input) { input.id = uniqueId(); label.htmlFor = input.id; }
        });
        return wrap;
      },
      read: function (row) {
        var kind = row.querySelector("[data-role=kind]").value;
        var item = { name: row.querySelector("[data-role=name]").value, kind: kind };
        row.querySelectorAll("[data-field]").forEach(function (input) {
          var name = input.dataset.field;
          if (input.type === "checkbox") {
            if (input.checked) item[name] = true;
            return;
          }
          var text = input.value;
          if (text.trim() === "") return; // left out: the server says what is missing
          if (name === "ms" || name === "n") item[name] = numberOrText(text);
          else if (name === "arguments") {
            try { item[name] = JSON.parse(text); } catch (error) { item[name] = text; }
          } else item[name] = text;
        });
        return item;
      }
    });
  }

  document.querySelectorAll("textarea[data-editor=script]").forEach(scriptEditor);
  document.querySelectorAll("textarea[data-editor=criteria]").forEach(criteriaEditor);
})();
