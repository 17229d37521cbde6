// Live page, server cameras: a picker lists the enabled cameras; picking one stops sending this browser's
// webcam (window.liveView from live.js) and shows that camera instead. The page asks for the camera's
// newest `faces` answer, then fetches the picture it was made on, shows it and draws the same boxes and
// names with live.js's own drawing and list. One request is in flight at most, so nothing queues.
(function () {
  "use strict";

  const picker = document.getElementById("camera-picker");
  const view = window.liveView;
  if (!picker || !view) return;
  const byId = (id) => document.getElementById(id);
  const select = byId("live-source");
  const video = byId("live-video");
  const image = byId("camera-image");
  const overlay = byId("live-overlay");
  const fpsOut = byId("live-fps");
  const rateOut = byId("live-rate");
  const rttOut = byId("live-rtt");
  const serverOut = byId("live-server-ms");
  const sizeOut = byId("live-size");
  const MIN_PERIOD_MS = 100;
  const RETRY_MS = 1000;
  // For tests and the curious, like window.liveStats.
  const stats = (window.cameraStats = { camera: null, shown: 0, lastFrameId: null, lastAnswer: null, errors: 0 });

  let cameras = [];
  let showing = null; // the camera shown, or null: the webcam
  let timer = null;
  let pictureUrl = null;

  async function loadCameras() {
    try {
      const answer = await fetch(picker.dataset.camerasUrl, { headers: { Accept: "application/json" } });
      if (!answer.ok) return;
      cameras = (await answer.json()).cameras.filter((camera) => camera.enabled);
    } catch (error) {
      return;
    }
    for (const camera of cameras) {
      const option = document.createElement("option");
      option.value = String(camera.id);
      option.textContent = `Camera: ${camera.name}`;
      select.append(option);
    }
    picker.hidden = cameras.length === 0;
    const wanted = new URLSearchParams(window.location.search).get("camera");
    if (wanted && cameras.some((camera) => String(camera.id) === wanted)) {
      select.value = wanted;
      choose();
    }
  }

  function choose() {
    clearTimeout(timer);
    showing = cameras.find((camera) => String(camera.id) === select.value) || null;
    stats.camera = showing ? showing.id : null;
    stats.lastFrameId = null;
    video.hidden = showing !== null;
    image.hidden = showing === null;
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    if (showing) {
      view.pause();
      rateOut.textContent = String(showing.fps);
      view.setStatus(`Connecting to ${showing.name}…`);
      poll(showing);
    } else {
      view.resume();
    }
  }

  async function poll(camera) {
    const started = performance.now();
    let period = Math.max(MIN_PERIOD_MS, 1000 / camera.fps);
    try {
      const answer = await (await fetch(camera.faces_url, { headers: { Accept: "application/json" } })).json();
      if (showing !== camera) return;
      describe(camera, answer.status);
      if (answer.frame_url && answer.frame_id !== stats.lastFrameId) {
        await show(answer);
        rttOut.textContent = String(Math.round(performance.now() - started));
      }
    } catch (error) {
      stats.errors += 1;
      view.setStatus(`Cannot reach the server: ${error.message}`);
      period = RETRY_MS;
    }
    if (showing === camera) timer = setTimeout(() => poll(camera), Math.max(0, period - (performance.now() - started)));
  }

  async function show(answer) {
    const response = await fetch(answer.frame_url);
    if (!response.ok) return; // the frame was let go meanwhile: the next poll brings a newer one
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    await new Promise((resolve) => {
      image.onload = resolve;
      image.onerror = resolve;
      image.src = url;
    });
    if (pictureUrl) URL.revokeObjectURL(pictureUrl);
    pictureUrl = url;
    view.drawFaces(overlay, image, answer);
    view.listFaces(answer.faces, blob);
    stats.lastFrameId = answer.frame_id;
    stats.lastAnswer = answer;
    stats.shown += 1;
    serverOut.textContent = String(Math.round(answer.ms));
    sizeOut.textContent = `${answer.width}×${answer.height}`;
  }

  function describe(camera, status) {
    fpsOut.textContent = status.fps.toFixed(1);
    const problem = status.error ? `: ${status.error}` : "";
    view.setStatus(`${camera.name}: ${status.state}${problem}`);
  }

  select.addEventListener("change", choose);
  loadCameras();
})();
