// The metis web page: plain JavaScript, no build step, no external scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const ROLES = {
  tts: [["prompt", "Speaker prompt (3-30 s)"]],
  enhance: [["input", "Noisy speech"]],
  tse: [["mix", "Mixture"], ["enrol", "Enrolment of the target speaker"]],
  vc: [["source", "Speech to convert"], ["reference", "Reference voice"]],
};
const recorded = {}; // slot -> Blob recorded with MediaRecorder
let lastUrl = null;

function headers() {
  const key = $("apikey").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function layout() {
  const task = $("task").value;
  const roles = ROLES[task];
  $("tts-fields").classList.toggle("hidden", task !== "tts");
  const usingVoice = task === "tts" && $("voice").value !== "";
  $("prompt-fields").classList.toggle("hidden", usingVoice);
  for (const slot of [1, 2]) {
    const role = roles[slot - 1];
    const hide = !role || (task === "tts" && usingVoice);
    $("slot-" + slot).classList.toggle("hidden", hide);
    if (role) $("label-" + slot).textContent = role[1];
  }
  $("audio-fields").classList.toggle("hidden", task === "tts" && usingVoice);
}

function clearResult() {
  // a new run, or a failed one: the previous result's player, link and seed line go
  const player = $("player");
  player.pause();
  player.removeAttribute("src");
  player.classList.add("hidden");
  $("download").classList.add("hidden");
  $("download").removeAttribute("href");
  $("info").textContent = "";
  if (lastUrl) URL.revokeObjectURL(lastUrl);
  lastUrl = null;
}

function voiceHint(text) {
  const hint = $("voice-hint");
  hint.textContent = text;
  hint.classList.toggle("hidden", !text);
}

async function loadLists() {
  try {
    const r = await fetch("/v1/voices", { headers: headers() });
    if (r.status === 401) {
      voiceHint($("apikey").value.trim()
        ? "The API key was refused: check it to list the registered voices."
        : "This server needs an API key: enter it above to list the registered voices.");
    } else if (r.ok) {
      voiceHint("");
      const voices = (await r.json()).data;
      const sel = $("voice");
      const keep = sel.value;
      sel.length = 1;
      for (const v of voices) {
        const o = document.createElement("option");
        o.value = v.id;
        o.textContent = v.name + " (" + v.language + ", " + v.seconds + " s)";
        sel.appendChild(o);
      }
      if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    }
    const m = await fetch("/v1/models", { headers: headers() });
    if (m.ok) {
      const tasks = (await m.json()).data.map((x) => x.task);
      $("served").textContent = "Serving: " + tasks.join(", ") + ".";
    }
  } catch (e) {
    setStatus("cannot reach the service: " + e, true);
  }
  layout();
}

async function record(slot) {
  const btn = $("rec-" + slot);
  if (btn.recorder) {
    btn.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    setStatus("microphone not available: " + e, true);
    return;
  }
  const rec = new MediaRecorder(stream);
  const chunks = [];
  rec.ondataavailable = (ev) => chunks.push(ev.data);
  rec.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    recorded[slot] = new Blob(chunks, { type: rec.mimeType || "audio/webm" });
    $("rec-state-" + slot).textContent = "recorded " + Math.round(recorded[slot].size / 1024) + " KiB";
    btn.textContent = "Record";
    btn.recorder = null;
  };
  rec.start();
  btn.recorder = rec;
  btn.textContent = "Stop";
  $("rec-state-" + slot).textContent = "recording...";
}

function audioFor(slot) {
  const f = $("file-" + slot).files[0];
  if (f) return [f, f.name];
  if (recorded[slot]) return [recorded[slot], "recording.webm"];
  return [null, null];
}

async function run() {
  const task = $("task").value;
  const form = new FormData();
  const seed = $("seed").value.trim();
  const steps = $("steps").value.trim();
  if (seed) form.append("seed", seed);
  if (steps) form.append("steps", steps);
  form.append("response_format", $("format").value);
  const usingVoice = task === "tts" && $("voice").value !== "";
  if (task === "tts") {
    form.append("text", $("text").value);
    form.append("language", $("language").value);
    if (usingVoice) form.append("voice", $("voice").value);
    else form.append("prompt_text", $("prompt-text").value);
  }
  if (!usingVoice) {
    const roles = ROLES[task];
    for (let i = 0; i < roles.length; i++) {
      const [blob, name] = audioFor(i + 1);
      if (!blob) {
        setStatus("give " + roles[i][1].toLowerCase() + " (a file or a recording)", true);
        return;
      }
      form.append(roles[i][0], blob, name);
    }
  }
  clearResult();
  setStatus("running " + task + "...", false);
  $("run").disabled = true;
  const t0 = performance.now();
  try {
    const r = await fetch("/v1/" + task, { method: "POST", body: form, headers: headers() });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try {
        msg = (await r.json()).error.message;
      } catch (e) {}
      setStatus(msg, true);
      return;
    }
    const blob = await r.blob();
    lastUrl = URL.createObjectURL(blob);
    const player = $("player");
    player.src = lastUrl;
    player.classList.remove("hidden");
    const link = $("download");
    link.href = lastUrl;
    const fmt = $("format").value;
    link.download = "metis-" + task + "." + (fmt === "pcm" ? "raw" : fmt);
    if (fmt === "pcm") player.classList.add("hidden"); // raw samples: no player can read them
    link.classList.remove("hidden");
    const h = (k) => r.headers.get(k) || "?";
    $("info").textContent =
      "seed " + h("x-metis-seed") + ", steps " + h("x-metis-steps") +
      "\nprocessing " + h("x-metis-processing-seconds") + " s, queued " + h("x-metis-queue-seconds") +
      " s, batch of " + h("x-metis-batch-size") +
      "\noutput " + h("x-metis-output-seconds") + " s, round trip " + ((performance.now() - t0) / 1000).toFixed(2) + " s";
    setStatus("done", false);
  } catch (e) {
    setStatus("request failed: " + e, true);
  } finally {
    $("run").disabled = false;
  }
}

async function registerVoice() {
  const file = $("voice-file").files[0];
  const status = $("voice-status");
  if (!file || !$("voice-text").value.trim()) {
    status.textContent = "give the audio and its transcript";
    return;
  }
  const form = new FormData();
  form.append("audio", file, file.name);
  form.append("text", $("voice-text").value);
  form.append("language", $("voice-language").value);
  if ($("voice-name").value.trim()) form.append("name", $("voice-name").value.trim());
  status.textContent = "uploading...";
  try {
    const r = await fetch("/v1/voices", { method: "POST", body: form, headers: headers() });
    const body = await r.json();
    if (!r.ok) {
      status.textContent = body.error ? body.error.message : "HTTP " + r.status;
      return;
    }
    await loadLists();
    $("voice").value = body.id;
    layout();
    // said last: once "registered" shows, the voice is listed and selected
    status.textContent = "registered " + body.name + (body.warnings ? " (" + body.warnings.join("; ") + ")" : "");
  } catch (e) {
    status.textContent = "request failed: " + e;
  }
}

$("task").addEventListener("change", layout);
$("voice-add").addEventListener("click", registerVoice);
$("voice").addEventListener("change", layout);
$("apikey").addEventListener("change", loadLists);
$("rec-1").addEventListener("click", () => record(1));
$("rec-2").addEventListener("click", () => record(2));
$("run").addEventListener("click", run);
loadLists();
