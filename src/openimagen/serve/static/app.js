// openimagen's page: plain JavaScript, no build step, nothing loaded from anywhere but this server.
// One EventSource at a time (the job being watched), so the browser's few connections stay free for fetch.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { caps: null, watching: null, source: null, mine: [], image: null, imageId: null };

// ---------------------------------------------------------------------------------------------
// talking to the server

async function call(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    let msg = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || data);
    if (r.status === 429) msg = `the queue is full; try again in ${r.headers.get("Retry-After")} s (${msg})`;
    throw new Error(msg);
  }
  return data;
}

function showError(e) {
  const el = $("error");
  el.textContent = e ? String(e.message || e) : "";
  el.hidden = !e;
}

// ---------------------------------------------------------------------------------------------
// the form

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function body(extra) {
  const mode = (extra && extra.kind) || $("mode").value;
  const b = { kind: mode, prompt: $("prompt").value, negative_prompt: $("negative").value.trim() || null,
              seed: numberOrNull("seed"), num_images: numberOrNull("num-images") || 1 };
  const n = state.caps.models[0].stages.length;
  const first = numberOrNull("steps"), guidance = numberOrNull("guidance"), sampler = $("sampler").value;
  if (first !== null) b.steps = [first, ...Array(n - 1).fill(null)];   // the first stage's; the others keep theirs
  if (guidance !== null) b.guidance = [guidance, ...Array(n - 1).fill(null)];
  if (sampler) b.sampler = sampler;
  if ($("stages").value) b.stop_at = Number($("stages").value);
  if (mode !== "txt2img") {
    if (state.imageId) b.image_id = state.imageId;
    else if (state.image) b.image = state.image.dataUrl;
    else throw new Error("choose an image first (a file, or 'edit' under a gallery image)");
    if (numberOrNull("strength") !== null && mode !== "outpaint") b.strength = numberOrNull("strength");
    if (mode === "inpaint") b.mask = maskPng();
    if (mode === "outpaint") b.extend = { right: numberOrNull("extend") || 8 };
  }
  return Object.assign(b, extra || {});
}

function fill(req) {
  // A stored request (ours) or a parsed A1111 infotext: put what the form shows back into it.
  const first = (v) => (Array.isArray(v) ? v.find((x) => x !== null && x !== undefined) : v);
  if (req.prompt !== undefined) $("prompt").value = Array.isArray(req.prompt) ? req.prompt[0] : req.prompt;
  $("negative").value = req.negative_prompt || "";
  if (req.seed !== undefined) $("seed").value = req.seed;
  const steps = first(req.steps), guidance = first(req.guidance), sampler = first(req.sampler);
  $("steps").value = typeof steps === "number" ? steps : "";
  $("guidance").value = guidance ?? "";
  $("sampler").value = [...$("sampler").options].some((o) => o.value === sampler) ? sampler : "";
  if (req.num_images) $("num-images").value = req.num_images;
  if (req.mode && req.mode !== "upscale") $("mode").value = req.mode;
  else if (!req.mode) $("mode").value = "txt2img";
  modeChanged();
}

function fromInfotext(p) {
  return { prompt: p.prompt, negative_prompt: p.negative_prompt, seed: Number(p.Seed),
           steps: Number(p.Steps) || null, guidance: Number(p["CFG scale"]) || null, sampler: p.Sampler };
}

function modeChanged() {
  const mode = $("mode").value;
  $("edit-panel").hidden = mode === "txt2img";
  $("mask-tools").hidden = mode !== "inpaint";
  $("mask-canvas").hidden = mode !== "inpaint";
  $("extend-label").hidden = mode !== "outpaint";
}

// ---------------------------------------------------------------------------------------------
// the image and its mask, both kept at the image's own pixel size whatever the page zoom

function loadImage(src, imageId) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const w = img.naturalWidth, h = img.naturalHeight;
      for (const c of [$("edit-image"), $("mask-canvas")]) { c.width = w; c.height = h; }
      $("canvas-wrap").style.aspectRatio = `${w} / ${h}`;
      $("canvas-wrap").style.height = "auto";
      $("edit-image").getContext("2d").drawImage(img, 0, 0);
      const dataUrl = $("edit-image").toDataURL("image/png");
      state.image = { w, h, dataUrl };
      state.imageId = imageId || null;
      clearMask();
      resolve();
    };
    img.onerror = () => reject(new Error("this file is not an image the browser can read"));
    img.src = src;
  });
}

function clearMask() {
  const c = $("mask-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

function invertMask() {
  const c = $("mask-canvas"), ctx = c.getContext("2d");
  const d = ctx.getImageData(0, 0, c.width, c.height);
  for (let i = 0; i < d.data.length; i += 4) {
    const on = d.data[i + 3] >= 128;
    d.data[i] = 255; d.data[i + 1] = 64; d.data[i + 2] = 64; d.data[i + 3] = on ? 0 : 255;
  }
  ctx.putImageData(d, 0, 0);
}

function toImagePixels(canvas, e) {
  // The canvas is drawn at CSS size; the mask lives in image pixels. getBoundingClientRect and the
  // pointer's client coordinates share one space at any zoom, so their ratio is the only scale needed.
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}

function paint(canvas, from, to) {
  const ctx = canvas.getContext("2d"), radius = Math.max(0.5, (numberOrNull("brush") || 3) / 2);
  ctx.fillStyle = "rgb(255, 64, 64)";
  const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1]) / (radius / 2)));
  for (let i = 0; i <= steps; i++) {
    const x = from[0] + (to[0] - from[0]) * i / steps, y = from[1] + (to[1] - from[1]) * i / steps;
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function setupBrush() {
  const c = $("mask-canvas");
  let last = null;
  c.addEventListener("pointerdown", (e) => { c.setPointerCapture(e.pointerId); last = toImagePixels(c, e); paint(c, last, last); });
  c.addEventListener("pointermove", (e) => { if (last) { const p = toImagePixels(c, e); paint(c, last, p); last = p; } });
  for (const ev of ["pointerup", "pointercancel"]) c.addEventListener(ev, () => { last = null; });
}

function maskPng() {
  // white = repaint, black = keep; the server checks it has the image's size
  const c = $("mask-canvas"), src = c.getContext("2d").getImageData(0, 0, c.width, c.height);
  const out = document.createElement("canvas");
  out.width = c.width; out.height = c.height;
  const ctx = out.getContext("2d"), d = ctx.createImageData(c.width, c.height);
  let any = false;
  for (let i = 0; i < d.data.length; i += 4) {
    const v = src.data[i + 3] >= 128 ? 255 : 0;
    any = any || v > 0;
    d.data[i] = d.data[i + 1] = d.data[i + 2] = v; d.data[i + 3] = 255;
  }
  if (!any) throw new Error("paint the area to repaint on the image first");
  ctx.putImageData(d, 0, 0);
  return out.toDataURL("image/png");
}

// ---------------------------------------------------------------------------------------------
// jobs: submit, watch one over SSE, cancel

async function submit(extra) {
  showError(null);
  try {
    const job = await call("POST", "/api/v1/jobs", body(extra));
    state.mine.push(job.id);
    if (Number($("seed").value) === -1) $("status").textContent = `queued with seed ${job.seeds[0]}`;
    if (!state.watching || state.watching.done) watch(job);
    refreshQueue();
  } catch (e) { showError(e); }
}

function watch(job) {
  if (state.source) state.source.close();
  state.watching = { id: job.id, done: false };
  $("progress").value = 0;
  const es = new EventSource(job.events_url);
  state.source = es;
  const label = (d) => `${d.status || "running"} · stage ${d.stage} step ${d.step}/${d.steps}` +
                       (d.eta_s != null ? ` · ${d.eta_s.toFixed(1)} s left` : "");
  es.addEventListener("queued", (e) => { $("status").textContent = `queued (position ${JSON.parse(e.data).position})`; });
  es.addEventListener("started", () => { $("status").textContent = "running"; });
  es.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    $("progress").value = d.progress;
    $("status").textContent = label(d);
    if (d.preview_url) { $("preview").src = d.preview_url; $("preview").hidden = false; }
  });
  const end = (kind) => (e) => {
    const d = JSON.parse(e.data);
    es.close();
    state.source = null;
    state.watching.done = true;
    $("status").textContent = kind === "completed" ? `done · ${d.images.length} image(s)` :
      `${kind}${d.error ? ": " + d.error.message : ""}`;
    $("status").dataset.state = kind;
    if (kind === "completed") {
      $("progress").value = 1;
      $("result").replaceChildren(...d.images.map((im) => Object.assign(new Image(), { src: im.url, alt: `seed ${im.seed}` })));
    }
    refreshGallery();
    refreshQueue().then(nextToWatch);
  };
  for (const kind of ["completed", "failed", "cancelled"]) es.addEventListener(kind, end(kind));
}

async function nextToWatch() {
  const q = await call("GET", "/api/v1/queue").catch(() => null);
  if (!q) return;
  const next = [...q.running, ...q.pending].find((j) => state.mine.includes(j.id) || !state.mine.length);
  if (next && (!state.watching || state.watching.done)) watch(next);
}

async function cancel(id) {
  showError(null);
  const target = id || (state.watching && !state.watching.done && state.watching.id);
  if (!target) return;
  try { await call("POST", `/api/v1/jobs/${target}/cancel`); } catch (e) { showError(e); }
  refreshQueue();
}

async function refreshQueue() {
  const q = await call("GET", "/api/v1/queue").catch(() => null);
  if (!q) return;
  const item = (j, what) => {
    const li = document.createElement("li");
    li.dataset.id = j.id;
    li.textContent = `${what}: ${j.prompt} `;
    const b = Object.assign(document.createElement("button"), { textContent: "cancel", type: "button" });
    b.addEventListener("click", () => cancel(j.id));
    li.append(b);
    return li;
  };
  $("queue").replaceChildren(...q.running.map((j) => item(j, "running")), ...q.pending.map((j) => item(j, "waiting")));
}

// ---------------------------------------------------------------------------------------------
// the gallery (on the server's disk: it survives restarts)

async function refreshGallery() {
  const g = await call("GET", "/api/v1/gallery?limit=100").catch(() => null);
  if (!g) return;
  const last = state.caps.models[0].stages.length - 1;
  $("gallery").replaceChildren(...g.images.map((rec) => {
    const fig = document.createElement("figure");
    fig.dataset.id = rec.id;
    const img = Object.assign(new Image(), { src: rec.url, alt: rec.prompt, title: `${rec.prompt} · seed ${rec.seed}` });
    const cap = document.createElement("figcaption");
    cap.textContent = `${rec.width}×${rec.height} · seed ${rec.seed} · ${rec.prompt}`;
    const button = (text, fn) => {
      const b = Object.assign(document.createElement("button"), { textContent: text, type: "button" });
      b.addEventListener("click", fn);
      return b;
    };
    fig.append(img, cap,
      button("settings", async () => {
        try { fill((await call("GET", `/api/v1/images/${rec.id}/parameters`)).request); } catch (e) { showError(e); }
      }),
      button("edit", async () => {
        await loadImage(rec.url, rec.id);
        if ($("mode").value === "txt2img") { $("mode").value = "img2img"; modeChanged(); }
      }));
    if (rec.stage < last) {
      fig.append(button("upscale", () => {
        state.imageId = rec.id;
        submit({ kind: "upscale", image_id: rec.id, image: undefined, mask: undefined, stop_at: undefined,
                 prompt: rec.prompt, num_images: 1, steps: undefined, guidance: undefined, strength: undefined });
      }));
    }
    return fig;
  }));
}

async function dropped(file) {
  showError(null);
  try {
    const dataUrl = await new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => resolve(fr.result);
      fr.onerror = () => reject(new Error("could not read the dropped file"));
      fr.readAsDataURL(file);
    });
    const info = await call("POST", "/api/v1/png-info", { image: dataUrl });
    if (info.request) fill(info.request);
    else if (info.parsed) fill(fromInfotext(info.parsed));
    else throw new Error(`${file.name} carries no generation parameters`);
  } catch (e) { showError(e); }
}

// ---------------------------------------------------------------------------------------------

async function start() {
  state.caps = await call("GET", "/api/v1/capabilities");
  const model = state.caps.models[0];
  $("model").textContent = `${model.name} · ${model.sizes.join(" → ")} px`;
  for (const s of state.caps.samplers) $("sampler").append(new Option(s, s));
  model.stages.forEach((s, i) => {
    const o = new Option(`${i + 1}: up to ${s.resolution} px`, i + 1 === model.stages.length ? "" : String(i + 1));
    $("stages").append(o);
  });
  $("stages").value = "";
  if (!state.caps.kinds.includes("upscale")) $("mode").querySelector("[value=upscale]").remove();
  $("mode").addEventListener("change", modeChanged);
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 4294967294); });
  $("generate").addEventListener("click", () => submit());
  $("candidates").addEventListener("click", () => submit({ kind: "txt2img", stop_at: 1, num_images: 4,
    image: undefined, image_id: undefined, mask: undefined, strength: undefined, extend: undefined }));
  $("cancel").addEventListener("click", () => cancel());
  $("clear-mask").addEventListener("click", clearMask);
  $("invert-mask").addEventListener("click", invertMask);
  $("image-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) loadImage(URL.createObjectURL(f)).catch(showError);
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer.files[0]) dropped(e.dataTransfer.files[0]);
  });
  setupBrush();
  modeChanged();
  await Promise.all([refreshGallery(), refreshQueue()]);
  await nextToWatch();  // a reload mid-run re-attaches to the running job
  setInterval(refreshQueue, 2000);
  document.body.dataset.ready = "1";
}

start().catch(showError);
