/* The endpoint editor (templates/dashboard/edit.html), enhanced:
 *
 * - model and version pickers: the version choices follow the model chosen. The form's own field
 *   is one select of "model vN" options, which is what works without JavaScript;
 * - served entities and environment variables are added and removed without a round trip;
 * - a served entity switches between a registered model and an external model, and an external
 *   model between providers, by showing one of the sections the server rendered (the others stay
 *   hidden and disabled, so they are not sent);
 * - the traffic-split editor: a slider beside each share's number, a live preview bar, and shares
 *   that always add up to 100.
 *
 * The remote endpoint's split page (templates/dashboard/remote_split.html) has the split alone: no
 * entity editor, so those parts stay off.
 *
 * Without this file the form still works: its buttons ("Add served entity", "Show its fields", …)
 * re-render it on the server, and the server checks that the numbers add up to 100.
 */
(function () {
  "use strict";

  const form = document.querySelector("form[data-split-editor]");
  if (!form) return;
  const totalForms = form.querySelector("input[name='entities-TOTAL_FORMS']");
  const entitiesBox = form.querySelector("[data-entities]");
  const splitRows = form.querySelector("[data-split-rows]");
  const bar = form.querySelector("[data-split-bar]");
  const totalOut = form.querySelector("[data-split-total]");
  const addEntity = form.querySelector("[data-add-entity]");
  const entityTemplate = document.getElementById("entity-template");
  const splitTemplate = document.getElementById("split-row-template");
  let touched = []; // split rows, the most recently edited last

  const clamp = (value) => Math.max(0, Math.min(100, value));

  // --- the traffic split ----------------------------------------------------------------------

  function liveRows() {
    return Array.from(splitRows.querySelectorAll("[data-split-row]")).filter((row) => !row.hasAttribute("data-removed"));
  }
  function numberInput(row) {
    return row.querySelector("input[type=number]");
  }
  function slider(row) {
    return row.querySelector("input[type=range]");
  }
  function labelOf(row) {
    return row.querySelector("[data-split-label]").textContent.trim();
  }
  function share(row) {
    const value = parseInt(numberInput(row).value, 10);
    return Number.isNaN(value) ? 0 : clamp(value);
  }

  function show(row, value) {
    numberInput(row).value = String(value);
    const range = slider(row);
    if (range) {
      range.value = String(value);
      range.setAttribute("aria-valuetext", `${value}% of queries to ${labelOf(row)}`);
    }
  }

  // Give `row` the share `wanted`, keeping the total at 100:
  // 1. the other rows absorb the difference, those left alone longest first (rows never touched,
  //    from the last one up, then the least recently edited), each staying within 0..100;
  // 2. whatever they cannot absorb stays with `row`.
  function setShare(row, wanted) {
    const rows = liveRows();
    if (rows.length === 1) {
      show(row, 100);
      redraw();
      return;
    }
    wanted = clamp(wanted);
    const others = rows
      .filter((other) => other !== row)
      .reverse()
      .sort((a, b) => touched.indexOf(a) - touched.indexOf(b));
    let rest = 100 - wanted - others.reduce((sum, other) => sum + share(other), 0);
    for (const other of others) {
      if (rest === 0) break;
      const before = share(other);
      const after = clamp(before + rest);
      rest -= after - before;
      show(other, after);
    }
    show(row, wanted + rest);
    touched = touched.filter((other) => other !== row && other.isConnected).concat(row);
    redraw();
  }

  function redraw() {
    const rows = liveRows();
    const segments = rows.map((row) => {
      const segment = document.createElement("span");
      segment.className = `seg seg-${row.dataset.colour}`;
      segment.style.width = `${share(row)}%`;
      segment.textContent = `${labelOf(row)} ${share(row)}%`;
      return segment;
    });
    bar.replaceChildren(...segments);
    const total = rows.reduce((sum, row) => sum + share(row), 0);
    const strong = document.createElement("strong");
    strong.textContent = `${total}%`;
    totalOut.replaceChildren("Total: ", strong, total === 100 ? "" : " (must be 100)");
    for (const row of rows) show(row, share(row)); // refresh aria-valuetext after a rename
  }

  function enhanceSplitRow(row) {
    const number = numberInput(row);
    const label = row.querySelector("[data-split-label]");
    const range = document.createElement("input");
    range.type = "range";
    range.min = "0";
    range.max = "100";
    range.step = "1";
    range.className = "split-slider";
    range.id = `${number.id}_slider`;
    range.value = String(share(row));
    range.setAttribute("aria-labelledby", label.id);
    range.setAttribute("aria-describedby", "split-help");
    number.before(range);
    range.addEventListener("input", () => setShare(row, parseInt(range.value, 10)));
    number.addEventListener("input", () => {
      const value = parseInt(number.value, 10);
      if (!Number.isNaN(value)) setShare(row, value);
    });
    number.addEventListener("change", () => {
      if (number.value.trim() === "") setShare(row, 0);
    });
  }

  function splitRowFor(prefix) {
    return splitRows.querySelector(`[data-split-row="${prefix}"]`);
  }

  // --- served entities ------------------------------------------------------------------------

  // Mirrors validation.default_served_entity_name, for the label only: the server names it.
  function defaultName(value) {
    const cut = value.lastIndexOf("/");
    if (cut < 0) return "new entity";
    const model = value.slice(0, cut).split(".").pop().replace(/[^A-Za-z0-9_-]/g, "-");
    return `${model}-${value.slice(cut + 1)}`;
  }

  function labelled(id, text) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = text;
    const select = document.createElement("select");
    select.id = id;
    wrap.append(label, select);
    return { wrap, select };
  }

  // One select of "model vN" options becomes a model select and a version select.
  function enhanceModelPicker(fieldset, onChange) {
    const combined = fieldset.querySelector("select[name$='-entity']");
    const groups = Array.from(combined.querySelectorAll("optgroup"));
    if (!groups.length) return;
    const model = labelled(`${combined.id}_model`, "Model");
    const version = labelled(`${combined.id}_version`, "Version");
    for (const group of groups) model.select.add(new Option(group.label, group.label));
    const errors = fieldset.querySelector(`#${CSS.escape(combined.id)}_error`);
    if (errors) model.select.setAttribute("aria-describedby", errors.id);

    function fillVersions(modelName) {
      const group = groups.find((g) => g.label === modelName);
      version.select.replaceChildren();
      for (const option of group.children) {
        const text = option.textContent.startsWith(`${modelName} `) ? option.textContent.slice(modelName.length + 1) : option.textContent;
        version.select.add(new Option(text, option.value));
      }
    }
    const current = combined.selectedOptions[0] || combined.querySelector("option");
    model.select.value = current.parentElement.label;
    fillVersions(model.select.value);
    version.select.value = current.value;

    model.select.addEventListener("change", () => {
      fillVersions(model.select.value);
      combined.value = version.select.value;
      onChange();
    });
    version.select.addEventListener("change", () => {
      combined.value = version.select.value;
      onChange();
    });
    const field = combined.closest(".field");
    const pair = document.createElement("div");
    pair.className = "field-pair";
    pair.append(model.wrap, version.wrap);
    field.querySelector(`label[for="${combined.id}"]`).hidden = true;
    combined.hidden = true;
    combined.before(pair);
  }

  function renumber() {
    if (!entitiesBox) return; // the split alone (a remote endpoint's page): no entity editor
    const live = Array.from(entitiesBox.querySelectorAll("[data-entity]")).filter((f) => !f.hasAttribute("data-removed"));
    live.forEach((fieldset, i) => {
      fieldset.querySelector("[data-entity-number]").textContent = String(i + 1);
      const remove = fieldset.querySelector("[data-remove-entity]");
      if (remove) remove.disabled = live.length === 1;
    });
  }

  // Show one of several server-rendered sections and disable the others, so that only the shown
  // one is sent (the server renders them the same way: the chosen one enabled, the others hidden).
  function showSection(sections, chosen) {
    for (const section of sections) {
      const on = chosen(section);
      section.hidden = !on;
      section.disabled = !on;
    }
  }

  function enhanceEntity(fieldset) {
    const prefix = fieldset.dataset.entity;
    const combined = fieldset.querySelector("select[name$='-entity']");
    const name = fieldset.querySelector("input[name$='-name']");
    const kind = fieldset.querySelector("select[name$='-kind']");
    const provider = fieldset.querySelector("select[name$='-provider']");
    const externalName = fieldset.querySelector("input[name$='-external_name']");
    const external = () => kind && kind.value === "external";
    const refreshLabel = () => {
      const row = splitRowFor(prefix);
      if (!row) return;
      // Mirrors forms.default_external_entity_name, for the label only.
      const fallback = external() ? externalName.value.trim().replace(/[.:]/g, "-") || "new entity" : defaultName(combined.value);
      row.querySelector("[data-split-label]").textContent = name.value.trim() || fallback;
      redraw();
    };
    enhanceModelPicker(fieldset, refreshLabel);
    name.addEventListener("input", refreshLabel);
    if (externalName) externalName.addEventListener("input", refreshLabel);

    // Registered model or external model; an external model's provider shows that provider's fields.
    for (const button of fieldset.querySelectorAll("[data-refresh]")) button.hidden = true;
    if (kind) {
      const kinds = fieldset.querySelectorAll(":scope > [data-kind-section]");
      kind.addEventListener("change", () => {
        showSection(kinds, (section) => section.dataset.kindSection === kind.value);
        refreshLabel();
      });
    }
    if (provider) {
      const providers = fieldset.querySelectorAll("[data-provider-section]");
      provider.addEventListener("change", () => {
        showSection(providers, (section) => section.dataset.providerSection === provider.value);
      });
    }

    // Removing: the DELETE box is ticked and hidden; the row's share goes to the others.
    const box = fieldset.querySelector("input[name$='-DELETE']");
    const holder = box.closest(".remove");
    holder.hidden = true;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary small danger";
    remove.textContent = "Remove served entity";
    remove.setAttribute("data-remove-entity", "");
    remove.addEventListener("click", () => {
      box.checked = true;
      fieldset.hidden = true;
      fieldset.setAttribute("data-removed", "");
      const row = splitRowFor(prefix);
      const freed = share(row);
      row.hidden = true;
      row.setAttribute("data-removed", "");
      touched = touched.filter((other) => other !== row);
      const heir = touched[touched.length - 1] || liveRows()[0];
      if (heir) setShare(heir, share(heir) + freed);
      renumber();
      addEntity.focus();
    });
    holder.after(remove);
    if (box.checked) {
      fieldset.hidden = true;
      fieldset.setAttribute("data-removed", "");
    }

    // Adding a variable: a blank copy of the last row.
    const addEnv = fieldset.querySelector("[data-add-env]");
    if (!addEnv) return;
    addEnv.type = "button";
    addEnv.addEventListener("click", () => {
      const body = fieldset.querySelector("[data-env-rows]");
      const copy = body.lastElementChild.cloneNode(true);
      const number = body.children.length + 1;
      for (const input of copy.querySelectorAll("input")) {
        input.value = "";
        input.removeAttribute("aria-invalid");
        input.setAttribute("aria-label", input.name.endsWith("env_key") ? `Variable ${number} name` : `Variable ${number} value`);
      }
      body.append(copy);
      copy.querySelector("input").focus();
    });
  }

  function fromTemplate(template, index) {
    const holder = document.createElement("div");
    holder.innerHTML = template.innerHTML.replaceAll("__prefix__", String(index)).trim();
    return holder.firstElementChild;
  }

  if (addEntity) addEntity.type = "button";
  if (addEntity) addEntity.addEventListener("click", () => {
    const index = parseInt(totalForms.value, 10);
    const fieldset = fromTemplate(entityTemplate, index);
    const row = fromTemplate(splitTemplate, index);
    row.dataset.colour = String(index % 10);
    entitiesBox.append(fieldset);
    splitRows.append(row);
    totalForms.value = String(index + 1);
    enhanceSplitRow(row);
    show(row, 0);
    enhanceEntity(fieldset);
    fieldset.querySelector("select[name$='-entity']").dispatchEvent(new Event("change"));
    const name = fieldset.querySelector("input[name$='-name']");
    row.querySelector("[data-split-label]").textContent = name.value.trim() || defaultName(fieldset.querySelector("select[name$='-entity']").value);
    renumber();
    redraw();
    (fieldset.querySelector("select:not([hidden])") || fieldset.querySelector("select")).focus();
  });

  for (const hint of form.querySelectorAll("[data-js-only]")) hint.hidden = false;
  for (const row of splitRows.querySelectorAll("[data-split-row]")) {
    enhanceSplitRow(row);
    if (row.hasAttribute("data-removed")) row.hidden = true;
  }
  if (entitiesBox) for (const fieldset of entitiesBox.querySelectorAll("[data-entity]")) enhanceEntity(fieldset);
  renumber();
  redraw();
})();
