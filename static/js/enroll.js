// Add person / add photos: webcam shots and chosen or dropped files in one list,
// posted with fetch; each photo's outcome is shown, and where a photo held several
// faces the user clicks the right one and sends it again.
// Everything user-given is put in the page with textContent, never as HTML.
(function () {
  "use strict";

  const form = document.getElementById("enroll-form");
  if (!form) return;

  const byId = (id) => document.getElementById(id);
  const video = byId("camera-preview");
  const startButton = byId("camera-start");
  const shotButton = byId("camera-shot");
  const stopButton = byId("camera-stop");
  const cameraMessage = form.querySelector("[data-camera-message]");
  const fileInput = byId("photo-files");
  const dropzone = byId("dropzone");
  const pendingList = byId("pending");
  const results = byId("results");
  const submitButton = byId("enroll-submit");
  const busy = byId("enroll-busy");
  const nameInput = form.querySelector("#name");
  const guidedToggle = byId("guided-toggle");
  const guided = byId("guided");
  const guidedPoses = byId("guided-poses");
  const guidedHints = byId("guided-hints");

  const SHOT_QUALITY = 0.92;
  // Guided capture: a preview frame this wide goes to the server every GUIDED_EVERY_MS (one at a time),
  // and a frame scoring at least GUIDED_GOOD in a pose still missing is taken as a photo.
  const GUIDED_EVERY_MS = 300;
  const PREVIEW_WIDTH = 640;
  const PREVIEW_QUALITY = 0.7;
  const GUIDED_GOOD = 0.5;
  const POSES = guided.dataset.poses.split(",").map((pose) => pose.trim()).filter(Boolean);
  // On a person's page the photo grid is server-rendered: reload it after a clean upload.
  const onPersonPage = form.dataset.mode === "existing";
  // Each item: {file, url, reason, faces: [[l, t, r, b]], size: [w, h], face: index or null,
  //             pose and label for guided shots}
  let pending = [];
  let stream = null;
  let shots = 0;
  let guidedTimer = null;
  let assessing = false;
  const taken = new Set();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // --- the list of photos to send ---------------------------------------------

  function addFiles(files, pose = null, label = null) {
    for (const file of files) {
      pending.push({ file, url: URL.createObjectURL(file), reason: null, faces: [], size: null, face: null, pose, label });
    }
    renderPending();
  }

  function removeItem(item) {
    URL.revokeObjectURL(item.url);
    if (item.pose) {
      taken.delete(item.pose); // guided capture takes that pose again
      renderPoses();
    }
    pending = pending.filter((other) => other !== item);
    renderPending();
  }

  function image(src, attrs) {
    // Files the browser cannot show (the server will say why) get a plain tile instead.
    const node = el("img", { src, ...attrs });
    node.addEventListener("error", () => node.replaceWith(el("span", { class: "no-preview", text: "no preview" })));
    return node;
  }

  function preview(item) {
    return image(item.url, { alt: item.file.name });
  }

  function faceButtons(item) {
    if (!item.faces.length || !item.size) return [];
    const [width, height] = item.size;
    return item.faces.map(([left, top, right, bottom], index) => {
      const button = el("button", {
        type: "button",
        class: "face-box" + (item.face === index ? " chosen" : ""),
        "aria-label": `Use face ${index + 1}`,
        "aria-pressed": String(item.face === index),
        style: `left:${(100 * left) / width}%;top:${(100 * top) / height}%;` +
          `width:${(100 * (right - left)) / width}%;height:${(100 * (bottom - top)) / height}%`,
        text: String(index + 1),
      });
      button.addEventListener("click", () => {
        item.face = index;
        renderPending();
      });
      return button;
    });
  }

  function renderPending() {
    pendingList.replaceChildren(
      ...pending.map((item) => {
        const picking = item.faces.length > 0;
        let status = null;
        if (picking && item.face !== null) {
          const text = `face ${item.face + 1} chosen; press the button below to send it`;
          status = el("span", { class: "status", text });
        } else if (picking) {
          status = el("span", { class: "status rejected", text: `${item.reason}: click the right face` });
        } else if (item.reason) {
          status = el("span", { class: "status rejected", text: `rejected: ${item.reason}` });
        }
        const remove = el("button", { type: "button", class: "small remove", text: "Remove" });
        remove.addEventListener("click", () => removeItem(item));
        return el(
          "li",
          { class: "pending-item" + (picking ? " pick" : "") + (item.reason ? " rejected" : "") },
          el("div", { class: "frame" }, preview(item), ...faceButtons(item)),
          el("span", { class: "file", text: item.file.name }),
          item.label ? el("span", { class: "status quality", text: item.label }) : null,
          status,
          remove,
        );
      }),
    );
  }

  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("over");
    });
  }
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });

  // --- the webcam -------------------------------------------------------------

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      cameraMessage.textContent = "The camera needs a secure page: open the app on localhost or over https.";
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
    } catch (error) {
      cameraMessage.textContent = `No camera: ${error.message || error.name}`;
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    cameraMessage.hidden = true;
    shotButton.disabled = false;
    guidedToggle.disabled = false;
    startButton.hidden = true;
    stopButton.hidden = false;
  }

  function stopCamera() {
    setGuided(false);
    guidedToggle.disabled = true;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    video.hidden = true;
    cameraMessage.hidden = false;
    cameraMessage.textContent = "Camera off";
    shotButton.disabled = true;
    startButton.hidden = false;
    stopButton.hidden = true;
  }

  function drawScaled(source, width, height, scale) {
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    canvas.getContext("2d").drawImage(source, 0, 0, canvas.width, canvas.height);
    return canvas;
  }

  function jpeg(canvas, quality) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
  }

  async function addShot(canvas, pose = null, label = null) {
    const blob = await jpeg(canvas, SHOT_QUALITY);
    shots += 1;
    const name = pose ? `webcam-${shots}-${pose}.jpg` : `webcam-${shots}.jpg`;
    addFiles([new File([blob], name, { type: "image/jpeg" })], pose, label);
  }

  function takePhoto() {
    if (!video.videoWidth) return;
    addShot(drawScaled(video, video.videoWidth, video.videoHeight, 1));
  }

  startButton.addEventListener("click", startCamera);
  stopButton.addEventListener("click", stopCamera);
  shotButton.addEventListener("click", takePhoto);

  // --- guided capture -----------------------------------------------------------

  function renderPoses() {
    guidedPoses.replaceChildren(
      ...POSES.map((pose) =>
        el("li", { class: taken.has(pose) ? "done" : "", "data-pose": pose, text: (taken.has(pose) ? "✓ " : "") + pose }),
      ),
    );
  }

  function showHints(text, good) {
    guidedHints.textContent = text;
    guidedHints.classList.toggle("good", good);
  }

  function setGuided(on) {
    guidedToggle.checked = on;
    guided.hidden = !on;
    clearInterval(guidedTimer);
    guidedTimer = on ? setInterval(assessFrame, GUIDED_EVERY_MS) : null;
    if (on) {
      renderPoses();
      showHints("Look at the camera.", false);
    }
  }

  // One preview frame to the server; a good frame in a missing pose becomes a photo (the full-size frame).
  async function assessFrame() {
    const missing = POSES.filter((pose) => !taken.has(pose));
    if (assessing || !video.videoWidth || !missing.length) return;
    assessing = true;
    try {
      const full = drawScaled(video, video.videoWidth, video.videoHeight, 1);
      const preview = drawScaled(full, full.width, full.height, Math.min(1, PREVIEW_WIDTH / full.width));
      const body = new FormData();
      body.append("image", await jpeg(preview, PREVIEW_QUALITY), "preview.jpg");
      body.append("want", missing[0]);
      const response = await fetch(guided.dataset.assessUrl, {
        method: "POST",
        body,
        headers: { Accept: "application/json", "X-CSRFToken": form.elements.csrf_token.value },
      });
      const data = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
      if (!guidedToggle.checked) return;
      if (!response.ok) {
        showHints(data.error || `the server answered ${response.status}`, false);
        return;
      }
      const quality = `quality ${data.score.toFixed(2)}`;
      if (data.score >= GUIDED_GOOD && missing.includes(data.pose)) {
        taken.add(data.pose);
        renderPoses();
        await addShot(full, data.pose, `${data.pose} · ${quality}`);
      }
      const left = POSES.filter((pose) => !taken.has(pose));
      if (!left.length) {
        showHints("All poses taken: send the photos.", true);
        setGuided(false);
        guided.hidden = false;
        return;
      }
      const seen = data.pose ? `${data.pose}, ${quality}` : quality;
      const hints = data.hints.length ? data.hints : data.score < GUIDED_GOOD ? ["hold still"] : [`turn to the ${left[0]}`];
      showHints(`${hints.join("; ")} (${seen}; still needed: ${left.join(", ")})`, false);
    } catch (error) {
      showHints(`The server did not answer: ${error.message}`, false);
    } finally {
      assessing = false;
    }
  }

  guidedToggle.addEventListener("change", () => setGuided(guidedToggle.checked));

  // --- sending and showing outcomes ----------------------------------------------

  function showResults(message, kind, outcomes, link) {
    const summary = el("p", { class: `flash ${kind}`, id: "results-summary", text: message });
    if (link) summary.append(" ", el("a", { href: link.href, text: link.text }));
    const list = el(
      "ul",
      { class: "outcomes" },
      ...(outcomes || []).map(({ outcome, url }) =>
        el(
          "li",
          { class: "outcome " + (outcome.accepted ? "accepted" : "rejected") },
          image(outcome.thumb_url || url, { alt: "", width: "64", height: "64" }),
          el("span", { class: "file", text: outcome.file }),
          el("span", { class: "status", text: outcome.accepted ? "accepted" : `rejected: ${outcome.reason}` }),
        ),
      ),
    );
    results.replaceChildren(el("h2", { text: "Result" }), summary, list);
  }

  function switchToPerson(person) {
    // The person exists now: further photos are added to them, the same way.
    form.action = person.add_photos_url;
    form.dataset.mode = "existing";
    form.dataset.personName = person.name;
    if (nameInput) nameInput.readOnly = true;
    submitButton.textContent = `Add these photos to ${person.name}`;
  }

  function handleResult(data) {
    const sent = pending;
    const outcomes = data.photos.map((outcome, i) => ({ outcome, url: sent[i] ? sent[i].url : "" }));
    pending = [];
    sent.forEach((item, i) => {
      const outcome = data.photos[i];
      if (outcome && outcome.accepted) return;
      item.reason = outcome ? outcome.reason : "no answer";
      item.faces = (outcome && outcome.faces) || [];
      item.size = outcome && outcome.width ? [outcome.width, outcome.height] : null;
      item.face = null;
      pending.push(item);
    });
    renderPending();

    const person = data.person;
    const wasNew = form.dataset.mode === "new";
    if (person && wasNew) switchToPerson(person);
    if (!person) {
      showResults(data.error || "No photo was accepted.", "error", outcomes);
    } else if (!data.accepted) {
      showResults(`No photo was accepted; nothing was added to ${person.name}.`, "error", outcomes);
    } else {
      const what = wasNew
        ? `Added ${person.name} with ${data.accepted} photo(s).`
        : `Added ${data.accepted} photo(s) to ${person.name}.`;
      const more = data.rejected ? ` ${data.rejected} photo(s) were not accepted; see below.` : "";
      const link = { href: person.url, text: wasNew ? `Open ${person.name}'s page` : "Show all photos" };
      showResults(what + more, "ok", outcomes, link);
      if (onPersonPage && !data.rejected) window.location.reload();
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!pending.length) {
      showResults("Add at least one photo: take one with the camera or choose files.", "error", []);
      return;
    }
    const body = new FormData();
    body.append("csrf_token", form.elements.csrf_token.value); // the server refuses posts without it
    if (nameInput && form.dataset.mode === "new") body.append("name", nameInput.value);
    pending.forEach((item, i) => {
      body.append("photos", item.file, item.file.name);
      if (item.face !== null) body.append(`face_${i}`, String(item.face));
    });
    submitButton.disabled = true;
    busy.hidden = false;
    try {
      const response = await fetch(form.action, { method: "POST", body, headers: { Accept: "application/json" } });
      const data = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
      if (data.photos) handleResult(data);
      else showResults(data.error || `the server answered ${response.status}`, "error", []);
    } catch (error) {
      showResults(`The server did not answer: ${error.message}`, "error", []);
    } finally {
      submitButton.disabled = false;
      busy.hidden = true;
    }
  });
})();
