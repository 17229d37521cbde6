// Cameras page: the list (state, analysed fps, problem) is fetched again every few seconds; the add form,
// Test, Enable/Disable and Remove call the cameras' JSON API with the page's CSRF token.
(function () {
  "use strict";

  const root = document.getElementById("cameras");
  if (!root) return;
  const byId = (id) => document.getElementById(id);
  const table = byId("camera-list");
  const none = byId("camera-none");
  const message = byId("camera-message");
  const form = byId("camera-form");
  const REFRESH_MS = 2000;

  function csrfToken() {
    const field = document.querySelector('input[name="csrf_token"]');
    return field ? field.value : "";
  }

  async function api(method, url, body) {
    const options = { method, headers: { Accept: "application/json", "X-CSRFToken": csrfToken() } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const answer = await fetch(url, options);
    let data = {};
    try {
      data = await answer.json();
    } catch (error) {
      data = { error: `the server answered ${answer.status}` };
    }
    return { ok: answer.ok, data };
  }

  function say(text, bad) {
    message.textContent = text;
    message.className = bad ? "flash error" : "flash ok";
  }

  function testReport(result) {
    return result.ok ? `Works: ${result.width}×${result.height}${result.fps ? `, ${result.fps} fps` : ""}.`
      : `Does not work: ${result.error}.`;
  }

  // --- the list ---------------------------------------------------------------------

  function button(text, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.className = "small";
    element.textContent = text;
    element.addEventListener("click", () => onClick(element));
    return element;
  }

  function cell(className, content) {
    const td = document.createElement("td");
    td.className = className;
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    return td;
  }

  function row(camera) {
    const tr = document.createElement("tr");
    tr.dataset.cameraId = String(camera.id);
    const url = document.createElement("code");
    url.textContent = camera.url;
    const status = camera.status;
    const actions = document.createElement("span");
    actions.className = "heading-actions";
    actions.append(
      button("Test", async (element) => {
        element.disabled = true;
        say(`Testing ${camera.name}…`, false);
        const { ok, data } = await api("POST", `${root.dataset.apiUrl}/${camera.id}/test`);
        say(ok ? `${camera.name}: ${testReport(data)}` : data.error, !(ok && data.ok));
        element.disabled = false;
      }),
      button(camera.enabled ? "Disable" : "Enable", async () => {
        const { ok, data } = await api("PATCH", `${root.dataset.apiUrl}/${camera.id}`, { enabled: !camera.enabled });
        if (!ok) say(data.error, true);
        refresh();
      }),
      button("Remove", async () => {
        if (!window.confirm(`Remove the camera ${camera.name}? Its history stays.`)) return;
        const { ok, data } = await api("DELETE", `${root.dataset.apiUrl}/${camera.id}`);
        say(ok ? `${camera.name} removed.` : data.error, !ok);
        refresh();
      }),
    );
    if (camera.enabled) {
      const view = document.createElement("a");
      view.href = `${root.dataset.liveUrl}?camera=${camera.id}`;
      view.textContent = "Show on Live";
      actions.append(view);
    }
    tr.append(
      cell("camera-name", camera.name),
      cell("camera-url", url),
      cell(`camera-state state-${status.state}`, status.state),
      cell("camera-fps", `${status.fps} of ${camera.fps} fps`),
      cell("camera-error", status.error || ""),
      cell("camera-actions", actions),
    );
    return tr;
  }

  function render(cameras) {
    table.tBodies[0].replaceChildren(...cameras.map(row));
    table.hidden = cameras.length === 0;
    none.hidden = cameras.length > 0;
  }

  async function refresh() {
    try {
      const { ok, data } = await api("GET", root.dataset.apiUrl);
      if (ok) render(data.cameras);
    } catch (error) {
      say(`Cannot reach the server: ${error.message}`, true);
    }
  }

  // --- the add form -----------------------------------------------------------------

  function formBody() {
    const body = { name: form.elements.name.value, url: form.elements.url.value };
    if (form.elements.fps.value) body.fps = Number(form.elements.fps.value);
    if (form.elements.min_face_px.value) body.min_face_px = Number(form.elements.min_face_px.value);
    return body;
  }

  byId("camera-test").addEventListener("click", async (event) => {
    const element = event.currentTarget;
    element.disabled = true;
    say("Testing…", false);
    const { ok, data } = await api("POST", root.dataset.testUrl, { url: form.elements.url.value });
    say(ok ? testReport(data) : data.error, !(ok && data.ok));
    element.disabled = false;
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { ok, data } = await api("POST", root.dataset.apiUrl, formBody());
    if (!ok) {
      say(data.error, true);
      return;
    }
    say(`${data.name} added.`, false);
    form.reset();
    refresh();
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
