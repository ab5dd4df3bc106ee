// The demo page: a client of the server's public API (GET /model, POST /predict) and nothing
// else. A photo is sent as it is, so the server's checks and messages apply to it; webcam frames
// are sent one at a time, the next as soon as the last is answered, so the frame rate shown is
// the rate this machine classifies at.
'use strict';

const $ = (id) => document.getElementById(id);
const WEBCAM_MAX_SIDE = 640; // frames are scaled down to this before sending: detection is cheaper
const FPS_WINDOW_MS = 2000; // the frame rate shown is averaged over this much time

let model = null; // GET /model
let camera = null; // {stream, running}
let photoRequest = 0; // a newer photo makes the answer for an older one stale
let photoUrl = null; // the object URL of the photo shown, released when the next one comes

function setStatus(text, kind) {
  const status = $('status');
  status.textContent = text;
  status.className = kind || '';
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// POST /predict; resolves to {ok, status, body} where body is the parsed JSON answer.
async function predict(blob, name) {
  const query = `top_k=${model.classes.length}&name=${encodeURIComponent(name)}`;
  const response = await fetch(`/predict?${query}`, {
    method: 'POST',
    body: blob,
    headers: {'content-type': blob.type || 'application/octet-stream'},
  });
  let body;
  try {
    body = await response.json();
  } catch (e) {
    body = {error: `the server answered ${response.status} ${response.statusText}`};
  }
  return {ok: response.ok, status: response.status, body};
}

// Boxes over the picture, placed in percent of its pixel size so they follow any scaling.
function drawBoxes(faces, width, height) {
  const layer = $('boxes');
  layer.replaceChildren();
  faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box;
    const top = face.predictions[0];
    const box = document.createElement('div');
    box.className = 'box';
    box.dataset.face = String(i);
    box.dataset.box = face.box.join(',');
    box.style.left = `${(100 * x0) / width}%`;
    box.style.top = `${(100 * y0) / height}%`;
    box.style.width = `${(100 * (x1 - x0)) / width}%`;
    box.style.height = `${(100 * (y1 - y0)) / height}%`;
    const label = document.createElement('span');
    label.className = 'box-label';
    label.textContent = `${i + 1} · ${top.class} ${(100 * top.probability).toFixed(0)}%`;
    box.append(label);
    layer.append(box);
  });
}

// One card per face: the model's classes in its own order, each with its probability as a bar.
function listFaces(faces) {
  const list = $('faces');
  const cards = faces.map((face, i) => {
    const byClass = new Map(face.predictions.map((p) => [p.class, p.probability]));
    const best = face.predictions[0].class;
    const card = document.createElement('li');
    card.className = 'face';
    card.dataset.face = String(i);
    const title = document.createElement('h2');
    title.textContent = `Face ${i + 1}: ${best}`;
    card.append(title);
    for (const name of model.classes) {
      const p = byClass.get(name) ?? 0;
      const row = document.createElement('div');
      row.className = name === best ? 'bar best' : 'bar';
      row.dataset.class = name;
      row.dataset.probability = String(p);
      const label = document.createElement('span');
      label.className = 'bar-name';
      label.textContent = name;
      const track = document.createElement('span');
      track.className = 'bar-track';
      const fill = document.createElement('span');
      fill.className = 'bar-fill';
      fill.style.width = `${100 * p}%`;
      track.append(fill);
      const value = document.createElement('span');
      value.className = 'bar-value';
      value.textContent = percent(p);
      row.append(label, track, value);
      card.append(row);
    }
    return card;
  });
  list.replaceChildren(...cards);
}

function clearResult() {
  $('boxes').replaceChildren();
  $('faces').replaceChildren();
}

function showResult(result, width, height) {
  drawBoxes(result.faces, width, height);
  listFaces(result.faces);
  const n = result.faces.length;
  if (n === 0) setStatus(result.message || 'no face found', 'empty');
  else setStatus(n === 1 ? '1 face' : `${n} faces`, 'ok');
}

function showError(answer) {
  clearResult();
  const status = $('status');
  setStatus(answer.body.error || `error ${answer.status}`, 'error');
  status.dataset.code = String(answer.status);
}

function nextPaint() {
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}

// A photo: shown at once, sent as it is, and its faces drawn over it when the answer comes.
async function sendPhoto(file) {
  if (!model) return;
  stopCamera();
  const started = performance.now();
  const id = ++photoRequest;
  const photo = $('photo');
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  const loaded = new Promise((resolve) => {
    photo.onload = () => resolve(true);
    photo.onerror = () => resolve(false);
  });
  photo.src = photoUrl;
  $('stage').hidden = false;
  photo.hidden = false;
  $('camera').hidden = true;
  $('fps').hidden = true;
  clearResult();
  delete $('status').dataset.code;
  setStatus(`reading ${file.name}…`, 'busy');
  $('timing').textContent = '';
  let answer;
  try {
    answer = await predict(file, file.name);
  } catch (e) {
    answer = {ok: false, status: 0, body: {error: `the server cannot be reached (${e.message})`}};
  }
  const shown = await loaded;
  if (id !== photoRequest) return;
  if (!answer.ok) {
    photo.hidden = !shown;
    if (!shown) $('stage').hidden = true;
    showError(answer);
    return;
  }
  showResult(answer.body[0], photo.naturalWidth, photo.naturalHeight);
  await nextPaint();
  const ms = performance.now() - started;
  const timing = $('timing');
  timing.textContent = `Answered and drawn in ${ms.toFixed(0)} ms.`;
  timing.dataset.ms = ms.toFixed(1);
}

// The webcam: one frame in flight at a time; the rate is frames answered per second.
async function startCamera() {
  if (!model || camera) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
  } catch (e) {
    setStatus(`the webcam cannot be opened: ${e.message || e.name}`, 'error');
    return;
  }
  photoRequest++;
  camera = {stream, running: true};
  const video = $('camera');
  video.srcObject = stream;
  await video.play().catch(() => {});
  $('photo').hidden = true;
  video.hidden = false;
  $('stage').hidden = false;
  $('fps').hidden = false;
  $('fps').textContent = 'starting…';
  $('camera-toggle').textContent = 'Stop the webcam';
  clearResult();
  setStatus('webcam on', 'ok');
  runCamera(camera, video);
}

function stopCamera() {
  if (!camera) return;
  camera.running = false;
  camera.stream.getTracks().forEach((t) => t.stop());
  camera = null;
  $('camera').srcObject = null;
  $('camera-toggle').textContent = 'Start the webcam';
}

async function runCamera(session, video) {
  const canvas = document.createElement('canvas');
  const context = canvas.getContext('2d');
  const done = []; // times at which frames were answered, within FPS_WINDOW_MS
  let frames = 0;
  while (session.running) {
    if (!video.videoWidth) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const scale = Math.min(1, WEBCAM_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((r) => canvas.toBlob(r, 'image/jpeg', 0.9));
    let answer;
    try {
      answer = await predict(blob, 'webcam.jpg');
    } catch (e) {
      answer = {ok: false, status: 0, body: {error: `the server cannot be reached (${e.message})`}};
    }
    if (!session.running) return;
    if (answer.status === 503) {
      await new Promise((r) => setTimeout(r, 250)); // busy: wait, then send a fresh frame
      continue;
    }
    if (!answer.ok) {
      showError(answer);
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    showResult(answer.body[0], canvas.width, canvas.height);
    frames++;
    const now = performance.now();
    done.push(now);
    while (done.length > 2 && now - done[0] > FPS_WINDOW_MS) done.shift();
    const fpsText = $('fps');
    fpsText.dataset.frames = String(frames);
    if (done.length >= 2) {
      const fps = ((done.length - 1) * 1000) / (now - done[0]);
      fpsText.textContent = `${fps.toFixed(1)} frames/s`;
      fpsText.dataset.fps = fps.toFixed(2);
    }
  }
}

function setUp() {
  const input = $('file');
  input.addEventListener('change', () => {
    if (input.files.length) sendPhoto(input.files[0]);
    input.value = ''; // the same file chosen again is sent again
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files.length) sendPhoto(e.dataTransfer.files[0]);
  });
  $('camera-toggle').addEventListener('click', () => (camera ? stopCamera() : startCamera()));
  fetch('/model')
    .then((r) => r.json())
    .then((info) => {
      model = info;
      const m = $('model');
      m.textContent = `${info.model}: ${info.classes.join(', ')} (${info.runtime})`;
      m.dataset.ready = 'true';
    })
    .catch((e) => setStatus(`the server cannot be reached (${e.message})`, 'error'));
}

setUp();
