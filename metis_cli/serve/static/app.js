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
const RATE = 24000; // a streamed TTS: raw s16le mono PCM at 24 kHz
let lastUrl = null;
let ttsModel = null; // the served TTS model's id (GET /v1/models)
let audioCtx = null; // one AudioContext for every streamed run
let sources = []; // the buffers of the current stream, scheduled back to back
let playHead = 0; // AudioContext time at which the next buffer starts
// what the last run did, for tests: reads, PCM bytes, times from the click (ms), buffers scheduled
window.metisStream = null;

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
  const streaming = task === "tts" && $("stream").checked;
  $("format").disabled = streaming; // a stream is PCM, kept as a WAV
  $("format-note").classList.toggle("hidden", !streaming);
}

function stopPlayback() {
  for (const src of sources) {
    try {
      src.stop();
    } catch (e) {}
  }
  sources = [];
  playHead = 0;
}

function clearResult() {
  // a new run, or a failed one: the previous result's player, link, seed line and stream go
  stopPlayback();
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
      const models = (await m.json()).data;
      const tasks = models.map((x) => x.task);
      const tts = models.find((x) => x.task === "tts");
      ttsModel = tts ? tts.id : null;
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

// an integer field of a JSON body, written as typed (a seed may exceed 2**53); anything else is
// sent as a string, which the service refuses naming the field
const intJson = (v) => (/^(0|-?[1-9][0-9]*)$/.test(v) ? v : JSON.stringify(v));

function speechBody(seed, steps) {
  // POST /v1/audio/speech with a registered voice, streamed as raw PCM
  const body = {
    model: ttsModel || "metis",
    input: $("text").value,
    voice: $("voice").value,
    response_format: "pcm",
    stream_format: "audio",
  };
  if ($("language").value !== "auto") body.language = $("language").value;
  let json = JSON.stringify(body).slice(0, -1);
  if (seed) json += ',"seed":' + intJson(seed);
  if (steps) json += ',"steps":' + intJson(steps);
  return json + "}";
}

function audioContext() {
  // made in the click's handler (autoplay rules); 24 kHz where the browser allows it, otherwise
  // Web Audio resamples the 24 kHz buffers
  if (!audioCtx) {
    const AC = window.AudioContext || window.webkitAudioContext;
    try {
      audioCtx = new AC({ sampleRate: RATE });
    } catch (e) {
      audioCtx = new AC();
    }
  }
  if (audioCtx.state === "suspended") audioCtx.resume().catch(() => {});
  return audioCtx;
}

function schedule(ctx, bytes) {
  // whole s16le samples -> one buffer, started where the previous one ends
  const n = bytes.length / 2;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const buf = ctx.createBuffer(1, n, RATE);
  const out = buf.getChannelData(0);
  for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  if (playHead < ctx.currentTime + 0.02) playHead = ctx.currentTime + 0.05; // first, or an underrun
  src.start(playHead);
  playHead += buf.duration;
  sources.push(src);
  src.onended = () => {
    sources = sources.filter((x) => x !== src);
  };
}

async function playStream(r, ctx, stats, t0) {
  // play the PCM as it arrives; the parts read, for the WAV
  const reader = r.body.getReader();
  const parts = [];
  let odd = null; // the first byte of a sample split between two reads
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!value || !value.length) continue;
    stats.chunks++;
    stats.bytes += value.length;
    parts.push(value);
    let bytes = value;
    if (odd !== null) {
      bytes = new Uint8Array(value.length + 1);
      bytes[0] = odd;
      bytes.set(value, 1);
      odd = null;
    }
    if (bytes.length % 2) {
      odd = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (!bytes.length) continue;
    schedule(ctx, bytes);
    stats.scheduled++;
    if (stats.firstAudioMs === null) stats.firstAudioMs = performance.now() - t0;
  }
  if (odd !== null) throw new Error("the stream ended inside a sample");
  return parts;
}

function wavBlob(parts, bytes) {
  // a 44-byte RIFF header (PCM 16-bit mono 24 kHz) and the samples
  const head = new DataView(new ArrayBuffer(44));
  const tag = (at, s) => [...s].forEach((c, i) => head.setUint8(at + i, c.charCodeAt(0)));
  tag(0, "RIFF");
  head.setUint32(4, 36 + bytes, true);
  tag(8, "WAVE");
  tag(12, "fmt ");
  head.setUint32(16, 16, true);
  head.setUint16(20, 1, true); // PCM
  head.setUint16(22, 1, true); // mono
  head.setUint32(24, RATE, true);
  head.setUint32(28, RATE * 2, true);
  head.setUint16(32, 2, true);
  head.setUint16(34, 16, true);
  tag(36, "data");
  head.setUint32(40, bytes, true);
  return new Blob([head.buffer, ...parts], { type: "audio/wav" });
}

function showResult(blob, task, fmt) {
  lastUrl = URL.createObjectURL(blob);
  const player = $("player");
  player.src = lastUrl;
  player.classList.remove("hidden");
  const link = $("download");
  link.href = lastUrl;
  link.download = "metis-" + task + "." + (fmt === "pcm" ? "raw" : fmt);
  if (fmt === "pcm") player.classList.add("hidden"); // raw samples: no player can read them
  link.classList.remove("hidden");
}

async function run() {
  const t0 = performance.now();
  const stats = { chunks: 0, bytes: 0, firstAudioMs: null, doneMs: null, scheduled: 0 };
  window.metisStream = stats;
  const task = $("task").value;
  const stream = task === "tts" && $("stream").checked;
  const form = new FormData();
  const seed = $("seed").value.trim();
  const steps = $("steps").value.trim();
  if (seed) form.append("seed", seed);
  if (steps) form.append("steps", steps);
  form.append("response_format", stream ? "pcm" : $("format").value);
  if (stream) form.append("stream_format", "audio");
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
  const ctx = stream ? audioContext() : null;
  setStatus("running " + task + "...", false);
  $("run").disabled = true;
  try {
    // a stream with a registered voice: the OpenAI-style endpoint; with an uploaded prompt: /v1/tts
    const r = stream && usingVoice
      ? await fetch("/v1/audio/speech", {
        method: "POST",
        body: speechBody(seed, steps),
        headers: { ...headers(), "Content-Type": "application/json" },
      })
      : await fetch("/v1/" + task, { method: "POST", body: form, headers: headers() });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try {
        msg = (await r.json()).error.message;
      } catch (e) {}
      setStatus(msg, true);
      return;
    }
    const h = (k) => r.headers.get(k) || "?";
    const seconds = () => ((performance.now() - t0) / 1000).toFixed(2);
    if (stream) {
      setStatus("streaming...", false);
      const parts = await playStream(r, ctx, stats, t0);
      stats.doneMs = performance.now() - t0;
      showResult(wavBlob(parts, stats.bytes), task, "wav");
      $("info").textContent =
        "seed " + h("x-metis-seed") + ", steps " + h("x-metis-steps") +
        "\nstreamed: " + h("x-metis-chunks") + " piece(s), first audio after " +
        (stats.firstAudioMs === null ? "?" : (stats.firstAudioMs / 1000).toFixed(2)) + " s" +
        "\noutput " + (stats.bytes / 2 / RATE).toFixed(2) + " s, round trip " + seconds() + " s";
    } else {
      showResult(await r.blob(), task, $("format").value);
      $("info").textContent =
        "seed " + h("x-metis-seed") + ", steps " + h("x-metis-steps") +
        "\nprocessing " + h("x-metis-processing-seconds") + " s, queued " + h("x-metis-queue-seconds") +
        " s, batch of " + h("x-metis-batch-size") +
        "\noutput " + h("x-metis-output-seconds") + " s, round trip " + seconds() + " s";
    }
    setStatus("done", false);
  } catch (e) {
    clearResult(); // a stream cut short: its partial audio stops, nothing is kept
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
$("stream").addEventListener("change", layout);
$("player").addEventListener("play", stopPlayback); // the WAV replaces a stream still playing
$("voice-add").addEventListener("click", registerVoice);
$("voice").addEventListener("change", layout);
$("apikey").addEventListener("change", loadLists);
$("rec-1").addEventListener("click", () => record(1));
$("rec-2").addEventListener("click", () => record(2));
$("run").addEventListener("click", run);
loadLists();
