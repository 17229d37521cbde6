// Live page: the <video> plays the webcam by itself; alongside, frames are scaled to
// the configured width, JPEG-encoded and sent as binary over a Socket.IO WebSocket.
// At most one frame is in flight: the next is captured only when the answer (or an
// error, or a timeout) arrives, so frames never queue. The server gives each camera a
// frame rate (a `rate` event: {fps, reason}); frames are sent no faster, and when the
// server is busy the page says so and shows the rate it is given. Answers are drawn on
// a canvas laid over the video and listed as text in #live-faces.
(function () {
  "use strict";

  const root = document.getElementById("live");
  if (!root) return;
  const byId = (id) => document.getElementById(id);
  const video = byId("live-video");
  const overlay = byId("live-overlay");
  const statusLine = byId("live-status");
  const startButton = byId("live-start");
  const labels = byId("live-faces");
  const fpsOut = byId("live-fps");
  const rttOut = byId("live-rtt");
  const serverOut = byId("live-server-ms");
  const sizeOut = byId("live-size");
  const rateOut = byId("live-rate");
  const loadLine = byId("live-load");

  const config = {
    namespace: root.dataset.namespace,
    frameWidth: Number(root.dataset.frameWidth),
    quality: Number(root.dataset.jpegQuality),
    timeoutMs: Number(root.dataset.timeoutMs),
  };
  const FPS_WINDOW_MS = 2000;
  const RETRY_MS = 200;
  const SMOOTHING = 0.2; // weight of the newest round trip in the displayed average
  const KNOWN = "#1f9d55";
  const UNKNOWN = "#e0a100";

  const capture = document.createElement("canvas");
  const captureContext = capture.getContext("2d");
  // Stats are also on window.liveStats, for tests and the curious.
  const stats = (window.liveStats = {
    sent: 0, answered: 0, errors: 0, timeouts: 0, fps: 0, rttMs: null, serverMs: null,
    rttSumMs: 0, rttCount: 0, serverSumMs: 0, // running sums, for averages over any window
    givenFps: null, busy: null, // the rate the server gives this camera, and why it is lower (null: not busy)
  });
  let inFlight = null; // {id, capturedAt, timer}
  let answerTimes = [];
  // frame_id counts the frames sent on this connection; a reconnect starts again at 0.
  let sentOnConnection = 0;
  let lastDrawnId = -1;
  let nextSendAt = 0; // performance.now() before which no frame goes (the given rate)
  let paceTimer = null;
  let paused = false; // another source (a server camera, static/js/camera_view.js) is shown instead

  // The camera's own frame rate goes with every (re)connection: the server gives at most that.
  const socket = io(config.namespace, { transports: ["websocket"], auth: (reply) => reply({ fps: cameraFps() }) });

  function cameraFps() {
    const track = video.srcObject && video.srcObject.getVideoTracks()[0];
    const fps = track && track.getSettings().frameRate;
    return fps > 0 ? fps : null;
  }

  function setStatus(text) {
    if (!paused) statusLine.textContent = text; // while a server camera is shown, its view says how it goes
  }

  // --- sending: one frame in flight at most ----------------------------------------

  function schedule() {
    setTimeout(sendFrame, 0);
  }

  function sendFrame() {
    if (paused || inFlight || !socket.connected || video.readyState < 2 || !video.videoWidth) return;
    if (stats.givenFps === 0) return; // the server is full: wait for a rate
    const wait = nextSendAt - performance.now();
    if (wait > 0) {
      clearTimeout(paceTimer);
      paceTimer = setTimeout(sendFrame, wait);
      return;
    }
    if (stats.givenFps) {
      const period = 1000 / stats.givenFps;
      nextSendAt = Math.max(nextSendAt, performance.now() - period) + period; // at most one frame ahead
    }
    const scale = Math.min(1, config.frameWidth / video.videoWidth);
    capture.width = Math.round(video.videoWidth * scale);
    capture.height = Math.round(video.videoHeight * scale);
    captureContext.drawImage(video, 0, 0, capture.width, capture.height);
    const frame = (inFlight = { id: null, capturedAt: performance.now(), timer: null });
    capture.toBlob(
      async (blob) => {
        const buffer = blob && (await blob.arrayBuffer());
        if (inFlight !== frame) return; // the connection dropped meanwhile
        if (!buffer || !socket.connected) {
          inFlight = null;
          setTimeout(sendFrame, RETRY_MS); // (a reconnect also starts sending again)
          return;
        }
        frame.id = sentOnConnection++;
        frame.blob = blob; // kept until answered, for "Not <name>"
        stats.sent += 1;
        socket.emit("frame", buffer);
        frame.timer = setTimeout(() => {
          if (inFlight === frame) {
            stats.timeouts += 1;
            inFlight = null;
            schedule();
          }
        }, config.timeoutMs);
      },
      "image/jpeg",
      config.quality,
    );
  }

  function settle(frameId) {
    // The answer for the frame in flight frees the slot for the next one.
    if (inFlight && inFlight.id === frameId) {
      clearTimeout(inFlight.timer);
      const rtt = performance.now() - inFlight.capturedAt;
      stats.rttMs = stats.rttMs === null ? rtt : (1 - SMOOTHING) * stats.rttMs + SMOOTHING * rtt;
      stats.rttSumMs += rtt;
      stats.rttCount += 1;
      inFlight = null;
    }
    schedule();
  }

  socket.on("connect", () => {
    sentOnConnection = 0;
    lastDrawnId = -1;
    nextSendAt = 0;
    setStatus("Connected; recognising.");
    schedule();
  });
  socket.on("disconnect", () => {
    setStatus("Disconnected from the server; reconnecting…");
    if (inFlight) clearTimeout(inFlight.timer);
    inFlight = null;
  });
  socket.on("connect_error", (error) => {
    // socket.active is false when the server refused us (e.g. the login expired): no retry will help.
    setStatus(socket.active ? `Cannot reach the server: ${error.message}` : `Refused: ${error.message}; reload the page.`);
  });

  socket.on("faces", (answer) => {
    const now = performance.now();
    stats.answered += 1;
    answerTimes.push(now);
    answerTimes = answerTimes.filter((t) => now - t <= FPS_WINDOW_MS);
    if (answerTimes.length > 1) stats.fps = (answerTimes.length - 1) / ((now - answerTimes[0]) / 1000);
    stats.serverMs = answer.ms;
    stats.serverSumMs += answer.ms;
    const blob = inFlight && inFlight.id === answer.frame_id ? inFlight.blob : null;
    settle(answer.frame_id);
    if (answer.frame_id > lastDrawnId && !paused) {
      lastDrawnId = answer.frame_id;
      draw(answer);
      if (!labels.matches(":hover")) list(answer.faces, blob); // held still while the pointer is on it, to click
    }
    showStats(answer);
  });

  socket.on("rate", (rate) => {
    stats.givenFps = rate.fps;
    stats.busy = rate.reason;
    rateOut.textContent = rate.fps.toFixed(rate.fps % 1 ? 1 : 0);
    loadLine.hidden = !rate.reason;
    if (rate.reason) {
      const reason = rate.reason.charAt(0).toUpperCase() + rate.reason.slice(1);
      loadLine.textContent = rate.fps > 0 ? `${reason}: this camera gets ${rateOut.textContent} frames a second.`
        : `${reason}: waiting for a free place.`;
    }
    nextSendAt = 0;
    schedule();
  });

  socket.on("error", (answer) => {
    stats.errors += 1;
    setStatus(`Server: ${answer.error}`);
    settle(answer.frame_id);
  });

  // --- showing answers ---------------------------------------------------------------

  function label(face) {
    return face.name === null ? "Unknown" : `${face.name} ${face.similarity.toFixed(2)}`;
  }

  function draw(answer) {
    drawFaces(overlay, video, answer);
  }

  // Boxes and labels of a `faces` answer on a canvas laid over `media` (a <video> or an <img>).
  function drawFaces(canvas, media, answer) {
    const ratio = window.devicePixelRatio || 1;
    const width = media.clientWidth;
    const height = media.clientHeight;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const sx = width / answer.width;
    const sy = height / answer.height;
    context.font = "600 15px system-ui, sans-serif";
    context.textBaseline = "bottom";
    for (const face of answer.faces) {
      const [left, top, right, bottom] = face.box;
      const colour = face.name === null ? UNKNOWN : KNOWN;
      context.lineWidth = 3;
      context.strokeStyle = colour;
      context.strokeRect(left * sx, top * sy, (right - left) * sx, (bottom - top) * sy);
      const text = label(face);
      const textWidth = context.measureText(text).width + 10;
      const y = Math.max(top * sy, 22);
      context.fillStyle = colour;
      context.fillRect(left * sx - 1.5, y - 22, textWidth, 22);
      context.fillStyle = "#fff";
      context.fillText(text, left * sx + 4, y - 4);
    }
  }

  function list(faces, blob) {
    labels.replaceChildren(
      ...faces.map((face) => {
        const item = document.createElement("li");
        item.className = face.name === null ? "unknown" : "known";
        item.textContent = label(face);
        if (face.person_id !== null && blob) {
          const button = document.createElement("button");
          button.type = "button";
          button.className = "small";
          button.textContent = `Not ${face.name}`;
          button.addEventListener("click", () => notThisPerson(face, blob, button));
          item.append(" ", button);
        }
        return item;
      }),
    );
  }

  // "Not <name>": the frame that was answered, the face's box and the person go to /api/corrections,
  // which keeps that face as a hard negative for the person's next training.
  async function notThisPerson(face, blob, button) {
    button.disabled = true;
    const body = new FormData();
    body.append("csrf_token", document.querySelector('input[name="csrf_token"]').value);
    body.append("person_id", String(face.person_id));
    body.append("box", JSON.stringify(face.box));
    body.append("image", blob, "frame.jpg");
    try {
      const answer = await fetch(root.dataset.correctionsUrl, { method: "POST", body, headers: { Accept: "application/json" } });
      const result = await answer.json();
      setStatus(answer.ok ? `Noted: not ${face.name}.` : `Not noted: ${result.error}`);
    } catch (error) {
      setStatus(`Not noted: ${error.message}`);
    }
  }

  function showStats(answer) {
    fpsOut.textContent = stats.fps.toFixed(1);
    rttOut.textContent = stats.rttMs === null ? "–" : String(Math.round(stats.rttMs));
    serverOut.textContent = String(Math.round(answer.ms));
    sizeOut.textContent = `${answer.width}×${answer.height}`;
  }

  // --- the camera -------------------------------------------------------------------

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("The camera needs a secure page: open the app on localhost or over https.");
      return;
    }
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
    } catch (error) {
      setStatus(`No camera: ${error.message || error.name}`);
      startButton.hidden = false;
      return;
    }
    startButton.hidden = true;
    setStatus(socket.connected ? "Connected; recognising." : "Connecting to the server…");
    video.addEventListener("loadeddata", schedule, { once: true });
  }

  startButton.addEventListener("click", startCamera);
  // For the server cameras' view (static/js/camera_view.js): the same drawing and list, and a way to stop sending.
  window.liveView = {
    drawFaces,
    listFaces: list,
    setStatus(text) {
      statusLine.textContent = text;
    },
    pause() {
      paused = true;
      if (inFlight) clearTimeout(inFlight.timer);
      inFlight = null;
    },
    resume() {
      paused = false;
      lastDrawnId = -1;
      schedule();
    },
  };
  startCamera();
})();
