// langevin serve: the studio page's script. Plain JavaScript, no libraries; every action is one
// call to the server's /api, which does the work.
"use strict";

const $ = (id) => document.getElementById(id);
const client = (() => {
  let id = localStorage.getItem("langevin-client");
  if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    id = "c" + Math.random().toString(36).slice(2, 12);
    localStorage.setItem("langevin-client", id);
  }
  return id;
})();

// What the page holds: the runs, the selected one, each tab's input, the job being watched.
const studio = { runs: [], run: null, inputs: {}, job: null, events: null, last: null };
window.studio = studio;

function notice(msg) {
  $("notice").textContent = msg || "";
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

// ---- models -------------------------------------------------------------------------------

async function loadRuns() {
  const info = await api("/api/info");
  $("device").textContent = `device ${info.device}`;
  $("sampler").innerHTML = info.samplers.map((s) => `<option>${s}</option>`).join("");
  $("sampler").value = "heun";
  studio.runs = await api("/api/runs");
  const list = $("runs");
  list.innerHTML = "";
  for (const r of studio.runs) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.className = "run";
    b.dataset.name = r.name;
    const kind = r.shape ? `${r.shape[0]}×${r.shape[1]}×${r.shape[2]}` : "tabular";
    b.innerHTML = `${r.name} <small>${kind}${r.diffusers ? " · diffusers" : ""}${r.superres ? " · SR3 ×" + r.superres : ""}</small>`;
    b.onclick = () => selectRun(r.name);
    li.appendChild(b);
    list.appendChild(li);
  }
  if (!studio.runs.length) list.innerHTML = "<li>no run folders under --runs</li>";
  const first = studio.runs.find((r) => r.shape) || studio.runs[0];
  if (first) selectRun(first.name);
}

function selectRun(name) {
  const r = studio.runs.find((x) => x.name === name);
  studio.run = r;
  for (const b of document.querySelectorAll("#runs button")) b.classList.toggle("active", b.dataset.name === name);
  $("model-name").textContent = r.name;
  const facts = [];
  facts.push(r.shape ? `images ${r.shape[0]}×${r.shape[1]}×${r.shape[2]}` : "tabular model (the studio works on image models)");
  if (r.classes) facts.push(`${r.classes} classes${r.guidance ? ", guidance" : ""}`);
  if (r.superres) facts.push(`SR3 ×${r.superres}`);
  if (r.error) facts.push(`error: ${r.error}`);
  $("model-facts").textContent = facts.join(" · ");
  const t = Date.now();
  $("model-samples-fig").hidden = !r.samples_png;
  $("model-loss-fig").hidden = !r.loss_png;
  if (r.samples_png) $("model-samples").src = `/api/runs/${r.name}/samples.png?${t}`;
  if (r.loss_png) $("model-loss").src = `/api/runs/${r.name}/loss.png?${t}`;
  $("model-config").textContent = JSON.stringify(r.config, null, 2);
  const names = r.class_names || [];
  let opts = `<option value="">none</option>`;
  for (let k = 0; k < r.classes; k++) opts += `<option value="${k}">${k}${names[k] && names[k] !== String(k) ? " " + names[k] : ""}</option>`;
  $("class").innerHTML = opts;
  if (r.shape) resizePaint(r.shape[1], r.shape[2]);
}

// ---- jobs ---------------------------------------------------------------------------------

function common(kind) {
  const cls = $("class").value;
  return {
    client,
    run: studio.run ? studio.run.name : "",
    kind,
    sampler: $("sampler").value,
    steps: Number($("steps").value),
    seed: Number($("seed").value),
    class: cls === "" ? null : Number(cls),
    guidance: Number($("guidance").value),
  };
}

async function startJob(body, target) {
  notice("");
  try {
    const snap = await api("/api/jobs", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    watch(snap, target);
  } catch (e) {
    notice(e.message);
    $("status").textContent = "refused";
  }
}

// Follow a job through its server-sent events; `target` is the output <img>, or null for the
// gallery (sampling).
function watch(snap, target) {
  if (studio.events) studio.events.close();
  studio.job = snap.id;
  studio.shown = 0;
  $("cancel").disabled = false;
  render(snap, target);
  const es = new EventSource(`/api/jobs/${snap.id}/events`);
  studio.events = es;
  es.addEventListener("job", (e) => {
    const s = JSON.parse(e.data);
    render(s, target);
    if (["done", "failed", "cancelled"].includes(s.state)) es.close();
  });
}

function render(s, target) {
  studio.last = s;
  $("progress").value = s.progress;
  let text = s.state;
  if (s.state === "queued") text = `queued (${s.position} ahead)`;
  if (s.state === "running") text = `running ${Math.round(100 * s.progress)}%`;
  if (s.state === "failed") text = `failed: ${s.error}`;
  $("status").textContent = `job ${s.id} (${s.kind}): ${text}`;
  document.body.dataset.jobState = s.state;
  for (; studio.shown < s.images.length; studio.shown++) {
    const url = s.images[studio.shown];
    addToGallery(url);
    if (target) target.src = url;
  }
  if (["done", "failed", "cancelled"].includes(s.state)) $("cancel").disabled = true;
}

function addToGallery(url) {
  const name = url.split("/").pop();
  const f = document.createElement("figure");
  f.innerHTML = `<img src="${url}" alt="${name}"><a href="${url}" download="${name}">download</a><br>`;
  for (const [tab, label] of [["inpaint", "inpaint"], ["img2img", "img2img"], ["upscale", "upscale"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.to = tab;
    b.onclick = () => { setInput(tab, { name, url }); showTab(tab); };
    f.appendChild(b);
  }
  $("gallery").prepend(f);
}

$("cancel").onclick = async () => {
  if (studio.job == null) return;
  try {
    await api(`/api/jobs/${studio.job}/cancel`, { method: "POST" });
  } catch (e) {
    notice(e.message);
  }
};

// ---- inputs -------------------------------------------------------------------------------

async function upload(file) {
  const type = file.type === "image/jpeg" ? "image/jpeg" : "image/png";
  return api(`/api/clients/${client}/uploads`, { method: "POST", headers: { "content-type": type }, body: file });
}

function setInput(tab, img) {
  studio.inputs[tab] = img;
  if (tab === "inpaint") drawPaintImage(img.url);
  else $(`${tab}-in`).src = img.url;
}

for (const tab of ["inpaint", "upscale", "img2img"]) {
  $(`${tab}-file`).addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      setInput(tab, await upload(file));
      notice("");
    } catch (err) {
      notice(err.message);
    }
  });
}

function showTab(tab) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${tab}`);
}
for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => showTab(b.dataset.tab);

// ---- the mask painter ---------------------------------------------------------------------

const paint = { image: $("inpaint-image"), mask: $("inpaint-mask"), down: false, last: null, h: 1, w: 1 };

function resizePaint(h, w) {
  paint.h = h;
  paint.w = w;
  const scale = 256 / Math.max(h, w);
  for (const c of [paint.image, paint.mask]) {
    c.width = Math.round(w * scale);
    c.height = Math.round(h * scale);
  }
  $("paint").style.width = `${paint.image.width}px`;
  $("paint").style.height = `${paint.image.height}px`;
  if (studio.inputs.inpaint) drawPaintImage(studio.inputs.inpaint.url);
}

function drawPaintImage(url) {
  const img = new Image();
  img.onload = () => {
    const ctx = paint.image.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, paint.image.width, paint.image.height);
    ctx.drawImage(img, 0, 0, paint.image.width, paint.image.height);
  };
  img.src = url;
}

function strokeTo(p) {
  const ctx = paint.mask.getContext("2d");
  ctx.globalCompositeOperation = $("eraser").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#ff2d2d";
  ctx.lineWidth = Number($("brush").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  const from = paint.last || p;
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(p.x, p.y);
  ctx.stroke();
  paint.last = p;
}

function point(e) {
  const r = paint.mask.getBoundingClientRect();
  return { x: ((e.clientX - r.left) * paint.mask.width) / r.width, y: ((e.clientY - r.top) * paint.mask.height) / r.height };
}

paint.mask.addEventListener("pointerdown", (e) => {
  paint.down = true;
  paint.last = null;
  paint.mask.setPointerCapture(e.pointerId);
  strokeTo(point(e));
});
paint.mask.addEventListener("pointermove", (e) => { if (paint.down) strokeTo(point(e)); });
for (const ev of ["pointerup", "pointercancel"]) paint.mask.addEventListener(ev, () => { paint.down = false; paint.last = null; });
$("clear-mask").onclick = () => paint.mask.getContext("2d").clearRect(0, 0, paint.mask.width, paint.mask.height);

// The painted mask at the model's size: a pixel is filled when paint covers over a quarter of
// it. White = fill, black = keep (as `langevin inpaint --mask` reads it).
function maskBlob() {
  const { width: W, height: H } = paint.mask;
  const a = paint.mask.getContext("2d").getImageData(0, 0, W, H).data;
  const out = document.createElement("canvas");
  out.width = paint.w;
  out.height = paint.h;
  const octx = out.getContext("2d");
  const img = octx.createImageData(paint.w, paint.h);
  let filled = 0;
  for (let y = 0; y < paint.h; y++) {
    for (let x = 0; x < paint.w; x++) {
      const [x0, x1] = [Math.floor((x * W) / paint.w), Math.floor(((x + 1) * W) / paint.w)];
      const [y0, y1] = [Math.floor((y * H) / paint.h), Math.floor(((y + 1) * H) / paint.h)];
      let cover = 0;
      for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) cover += a[4 * (yy * W + xx) + 3];
      const fill = cover / (255 * Math.max(1, (x1 - x0) * (y1 - y0))) > 0.25;
      filled += fill;
      const v = fill ? 255 : 0;
      img.data.set([v, v, v, 255], 4 * (y * paint.w + x));
    }
  }
  octx.putImageData(img, 0, 0);
  return new Promise((res) => out.toBlob((b) => res({ blob: b, filled }), "image/png"));
}

// ---- the four applications ----------------------------------------------------------------

$("run-sample").onclick = () => {
  const body = common("sample");
  body.count = Number($("count").value);
  startJob(body, null);
};

$("run-inpaint").onclick = async () => {
  const input = studio.inputs.inpaint;
  if (!input) return notice("upload or pick an image to inpaint first");
  const { blob, filled } = await maskBlob();
  if (!filled) return notice("paint the region to fill first");
  try {
    const mask = await upload(blob);
    const body = common("inpaint");
    Object.assign(body, { image: input.name, mask: mask.name });
    if (document.querySelector("input[name=fill]:checked").value === "repaint") {
      body.repaint = { jump: Number($("jump").value), count: Number($("passes").value) };
    }
    studio.inputs.mask = mask;
    startJob(body, $("inpaint-out"));
  } catch (e) {
    notice(e.message);
  }
};

$("run-upscale").onclick = () => {
  const input = studio.inputs.upscale;
  if (!input) return notice("upload a low-resolution image first");
  const body = common("upscale");
  body.image = input.name;
  delete body.class;
  delete body.guidance;
  startJob(body, $("upscale-out"));
};

$("strength").oninput = () => { $("strength-value").textContent = $("strength").value; };
$("run-img2img").onclick = () => {
  const input = studio.inputs.img2img;
  if (!input) return notice("upload or pick an image first");
  const body = common("img2img");
  Object.assign(body, { image: input.name, strength: Number($("strength").value) });
  startJob(body, $("img2img-out"));
};

// Results of earlier visits (this browser's folder on the server).
async function loadGallery() {
  for (const f of await api(`/api/clients/${client}/files`)) {
    if (f.name.startsWith("job-")) addToGallery(f.url);
  }
}

loadRuns().then(loadGallery).catch((e) => notice(e.message));
