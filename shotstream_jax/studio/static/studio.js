// ShotStream Studio: the page drives the same JSON + WebSocket API as any other client.
"use strict";

const $ = (id) => document.getElementById(id);
const studio = {
  info: null,        // GET /api/info
  id: null,          // the story's id
  state: null,       // the story's last `state` event
  ws: null,
  received: {},      // frames received over the WebSocket, per shot index (read by the tests)
  frames: [],        // decoded frames waiting to be shown: {shot, bitmap}
  currentShot: null, // shot of the latest `chunk` event: binary frames after it belong to it
  chunk: null,       // {shot, chunk, chunks}
  fps: null,
  shown: null,       // {shot, n}: the frame on screen
  error: "",
  version: 0,        // bumped by each rewind: shot indices are reused after it
};
window.studio = studio;

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: body ? {"Content-Type": "application/json"} : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

function showError(message) {
  studio.error = message || "";
  $("error").textContent = studio.error;
}

// ---- the story

// Words the model's vocabulary lacks (the API names them): the shot still queues, read without them.
function showUnknown(words) {
  const quoted = words.map((w) => `"${w}"`).join(", ");
  $("notice").textContent = words.length ?
    `The model does not know ${quoted}: it reads ${words.length > 1 ? "them" : "it"} as unknown words.` : "";
}

async function addShot() {
  const prompt = $("prompt").value.trim();
  if (!prompt) { showError("Describe the next shot first."); return; }
  showError("");
  try {
    const unknown = studio.id ? [] : await startStory();
    const answer = await api("POST", `/api/stories/${studio.id}/shots`, {prompt});
    showUnknown([...new Set(unknown.concat(answer.unknown_words))]);
    $("prompt").value = "";
  } catch (e) { showError(e.message); }
}

// Creates the story; returns the caption's unknown words.
async function startStory() {
  const caption = $("caption").value.trim();
  if (!caption) throw new Error("Write a global caption first: it frames the whole story.");
  const body = {global_caption: caption};
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const {id, seed, unknown_words} = await api("POST", "/api/stories", body);
  await attach(id, caption, seed);
  return unknown_words;
}

// Show story `id` on this page and follow it live; the tab remembers it across reloads.
async function attach(id, caption, seed) {
  studio.id = id;
  sessionStorage.setItem("shotstream-story", id);
  $("caption").value = caption;
  $("seed").value = seed;
  $("caption").readOnly = $("seed").readOnly = true;
  $("story-id").textContent = `story ${id}`;
  $("download").href = `/api/stories/${id}/video.mp4`;
  await connect();
}

function connect() {
  return new Promise((resolve) => {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/api/stories/${studio.id}/live`);
    ws.binaryType = "blob";
    ws.onopen = () => resolve();
    ws.onmessage = (m) => (typeof m.data === "string" ? onEvent(JSON.parse(m.data)) : onFrame(m.data));
    ws.onclose = () => {
      if (studio.ws !== ws) return;  // closed on purpose (new story)
      studio.ws = null;
      showError("The live connection closed; reload the page to follow the story again.");
      render();
    };
    studio.ws = ws;
  });
}

function onEvent(ev) {
  switch (ev.type) {
    case "state": studio.state = ev.story; break;
    case "shot_start": studio.currentShot = ev.shot; studio.chunk = {shot: ev.shot, chunk: -1, chunks: ev.chunks}; break;
    case "chunk":
      studio.currentShot = ev.shot;
      studio.chunk = {shot: ev.shot, chunk: ev.chunk, chunks: ev.chunks};
      studio.fps = ev.fps;
      break;
    case "shot_done": studio.fps = ev.fps; studio.chunk = null; break;
    case "rewound":
      studio.version += 1;
      studio.frames = studio.frames.filter((f) => f.shot < ev.shots);
      for (const k of Object.keys(studio.received)) if (Number(k) >= ev.shots) delete studio.received[k];
      break;
    case "error": showError(ev.error); break;
    case "deleted": break;
  }
  render();
}

async function onFrame(blob) {
  const shot = studio.currentShot;
  studio.received[shot] = (studio.received[shot] || 0) + 1;
  const entry = {shot, bitmap: null};  // queued now, so frames play in arrival order
  studio.frames.push(entry);
  entry.bitmap = await createImageBitmap(blob);
}

async function cut() {
  try { await api("POST", `/api/stories/${studio.id}/cut`); } catch (e) { showError(e.message); }
}

async function rewind(keep) {
  showError("");
  try {
    studio.state = await api("POST", `/api/stories/${studio.id}/rewind`, {shots: keep});
    render();
  } catch (e) { showError(e.message); }
}

async function newStory() {
  if (studio.id) {
    const id = studio.id;
    const ws = studio.ws;
    studio.ws = null;
    if (ws) ws.close();
    await api("DELETE", `/api/stories/${id}`).catch(() => {});
  }
  sessionStorage.removeItem("shotstream-story");
  Object.assign(studio, {id: null, state: null, ws: null, received: {}, frames: [], currentShot: null,
                         chunk: null, fps: null, shown: null});
  thumbs.clear();
  $("caption").readOnly = $("seed").readOnly = false;
  $("seed").value = "";
  $("story-id").textContent = "";
  $("download").removeAttribute("href");
  const ctx = $("screen").getContext("2d");
  ctx.clearRect(0, 0, $("screen").width, $("screen").height);
  showError("");
  showUnknown([]);
  render();
}

// ---- drawing

function statusText(s) {
  if (!studio.id) return ["idle", "idle"];
  if (!s) return ["connecting", "queued"];
  const waiting = s.shots.filter((x) => x.state === "queued").length;
  const more = waiting ? ` · ${waiting} more queued` : "";
  if (s.busy && studio.chunk) {
    const c = studio.chunk;
    const chunk = c.chunk < 0 ? "starting" : `chunk ${c.chunk + 1}/${c.chunks}`;
    return [`generating shot ${c.shot + 1} · ${chunk}${more}`, "generating"];
  }
  if (s.busy) return [`generating${more}`, "generating"];
  if (waiting) return [`queued · ${s.queued} shot${s.queued === 1 ? "" : "s"} ahead`, "queued"];
  const done = s.shots.filter((x) => x.done).length;
  if (done) return [`done · ${done} shot${done === 1 ? "" : "s"}`, "done"];
  return ["ready", "idle"];
}

function render() {
  const s = studio.state;
  const [text, kind] = statusText(s);
  $("status").textContent = text;
  $("status").className = `pill ${studio.error && !s?.busy ? "error" : kind}`;
  $("fps").textContent = studio.fps ? `${studio.fps.toFixed(1)} fps generated` : "";
  $("cut").disabled = !(s && s.busy);
  $("restart").disabled = !(s && !s.busy && s.shots.some((x) => x.done));
  $("download").classList.toggle("disabled", !(s && s.shots.some((x) => x.done)));
  $("overlay").classList.toggle("hidden", !!studio.shown || !!studio.id);
  renderTimeline(s ? s.shots : []);
}

// Thumbnail <img>s are kept while their shot is unchanged, so re-rendering does not reload them.
const thumbs = new Map();

function thumbnail(shot) {
  const key = `${studio.id}/${studio.version}/${shot.index}/${shot.frames}/${shot.state}`;
  if (!thumbs.has(key)) {
    const img = document.createElement("img");
    img.alt = `shot ${shot.index + 1}`;
    img.src = `/api/stories/${studio.id}/shots/${shot.index}/thumbnail.jpg?v=${encodeURIComponent(key)}`;
    thumbs.set(key, img);
  }
  return thumbs.get(key);
}

function renderTimeline(shots) {
  const box = $("shots");
  if (!shots.length) { box.innerHTML = '<p class="muted empty">No shots yet.</p>'; return; }
  const busy = studio.state && studio.state.busy;
  box.innerHTML = "";
  for (const shot of shots) {
    const card = document.createElement("div");
    card.className = `shot ${shot.state}`;
    card.dataset.index = shot.index;
    card.dataset.state = shot.state;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    if (shot.frames > 0) {  // the latest frame while it is generated, then its middle frame
      thumb.appendChild(thumbnail(shot));
    } else {
      thumb.textContent = shot.state === "queued" ? "queued" : "starting…";
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<div class="title"><span>Shot ${shot.index + 1}</span>
      <span class="state ${shot.state}">${shot.state}</span></div>`;
    const prompt = document.createElement("div");
    prompt.className = "prompt";
    prompt.textContent = shot.prompt;
    prompt.title = shot.prompt;
    const frames = document.createElement("div");
    frames.className = "muted";
    frames.textContent = `${shot.frames} frames`;
    meta.append(prompt, frames);
    if (shot.done) {
      const b = document.createElement("button");
      b.className = "rewind";
      b.textContent = "⟲ Rewind to here";
      b.title = `Keep shots 1–${shot.index + 1}, drop the rest`;
      b.disabled = busy;
      b.onclick = () => rewind(shot.index + 1);
      meta.appendChild(b);
    }
    card.append(thumb, meta);
    box.appendChild(card);
  }
  markPlaying();
}

function markPlaying() {
  for (const card of document.querySelectorAll("#shots .shot")) {
    card.classList.toggle("playing", !!studio.shown && Number(card.dataset.index) === studio.shown.shot);
  }
}

// Frames are shown at the model's frame rate, whatever the generation speed.
function play() {
  if (studio.frames.length && studio.frames[0].bitmap) {
    const f = studio.frames.shift();
    const canvas = $("screen");
    canvas.getContext("2d").drawImage(f.bitmap, 0, 0, canvas.width, canvas.height);
    f.bitmap.close();
    const n = studio.shown && studio.shown.shot === f.shot ? studio.shown.n + 1 : 1;
    studio.shown = {shot: f.shot, n};
    $("playhead").textContent = `playing shot ${f.shot + 1} · frame ${n}`;
    markPlaying();
    $("overlay").classList.add("hidden");
  }
}

async function init() {
  studio.info = await api("GET", "/api/info");
  const {width, height, fps, chunks_per_shot} = studio.info;
  $("screen").width = width;
  $("screen").height = height;
  $("model").textContent = `${width}×${height} · ${fps} fps · ${chunks_per_shot} chunks per shot`;
  setInterval(play, 1000 / fps);
  $("add").onclick = addShot;
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); addShot(); }
  });
  $("cut").onclick = cut;
  $("new").onclick = newStory;
  $("restart").onclick = () => rewind(0);
  const saved = sessionStorage.getItem("shotstream-story");
  if (saved) {
    const story = await api("GET", `/api/stories/${saved}`).catch(() => null);
    if (story) await attach(story.id, story.global_caption, story.seed);
    else sessionStorage.removeItem("shotstream-story");
  }
  render();
}

init().catch((e) => showError(`cannot reach the studio: ${e.message}`));
