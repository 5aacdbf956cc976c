"""The web page `serve` answers at `/`: choose or drop an image, see it, its class probabilities and the verdict.
A multi-label model's answer (it has "labels") shows each predicted label as a chip with its probability,
and the other classes' probabilities as bars below. Self-contained (no CDN): plain HTML, CSS bars and fetch()."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnetlab</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; max-width: 760px; margin: 24px auto; padding: 0 16px; color: #222 }
#drop { border: 2px dashed #999; border-radius: 8px; padding: 28px; text-align: center; cursor: pointer }
#drop.over { background: #eef5ff } img#preview { max-width: 240px; max-height: 240px; margin: 12px 0; display: none }
.row { display: flex; align-items: center; margin: 3px 0 } .name { width: 260px; overflow: hidden; white-space: nowrap }
.bar { height: 16px; background: #4a90d9; margin-right: 8px }
#verdict { font-size: 20px; font-weight: 600; margin: 10px 0 }
#verdict.unknown { color: #b00 } #error { color: #b00 }
.chip { display: inline-block; background: #4a90d9; color: #fff; border-radius: 14px; padding: 2px 12px;
        margin: 0 6px 6px 0 }
.chip .p { font-weight: 400; margin-left: 6px } .none { color: #666; font-weight: 400 }
</style></head><body>
<h1>resnetlab</h1>
<p id="model">loading...</p>
<div id="drop">Drop an image here, or <label><u>choose one</u><input id="file" type="file" accept="image/*"
  hidden></label></div>
<img id="preview" alt="your image">
<div id="verdict"></div><div id="bars"></div><div id="error"></div>
<script>
const $ = (id) => document.getElementById(id);
fetch('/health').then(r => r.json())
  .then(h => { $('model').textContent = h.classes + ' classes, ' + h.image_size + ' px'; });
async function classify(file) {
  $('error').textContent = ''; $('verdict').textContent = '...'; $('bars').innerHTML = '';
  $('preview').src = URL.createObjectURL(file); $('preview').style.display = 'block';
  const form = new FormData(); form.append('files', file, file.name);
  const response = await fetch('/predict', { method: 'POST', body: form });  // single-label: the top 5
  const body = await response.json();
  if (!response.ok) { $('verdict').textContent = ''; $('error').textContent = body.error; return; }
  const p = body.predictions[0];
  if (p.labels) { showLabels(p); document.body.dataset.done = 'yes'; return; }
  $('verdict').textContent = p.rejected ? 'unknown (no class is likely enough)' : p.verdict;
  $('verdict').className = p.rejected ? 'unknown' : '';
  for (const t of p.top) addBar(t['class'], t.probability);
  document.body.dataset.done = 'yes';
}
const pct = (v) => (100 * v).toFixed(1) + '%';
function addBar(label, probability) {
  const row = document.createElement('div'); row.className = 'row';
  const name = document.createElement('span'); name.className = 'name'; name.textContent = label;
  const bar = document.createElement('span'); bar.className = 'bar';
  bar.style.width = Math.round(300 * probability) + 'px';
  const value = document.createElement('span'); value.textContent = pct(probability);
  row.append(name, bar, value); $('bars').append(row);
}
function showLabels(p) {  // multi-label: a chip a predicted label, then the other classes, most probable first
  $('verdict').className = '';
  $('verdict').textContent = '';
  if (!p.labels.length) {
    const none = document.createElement('span'); none.className = 'none';
    none.textContent = 'no label (no class reaches its threshold)'; $('verdict').append(none);
  }
  for (const label of p.labels) {
    const chip = document.createElement('span'); chip.className = 'chip';
    const name = document.createElement('span'); name.className = 'label'; name.textContent = label;
    const value = document.createElement('span'); value.className = 'p';
    value.textContent = pct(p.probabilities[label]);
    chip.append(name, value); $('verdict').append(chip);
  }
  const others = Object.entries(p.probabilities).filter(([c]) => !p.labels.includes(c)).sort((a, b) => b[1] - a[1]);
  for (const [c, v] of others.slice(0, 20)) addBar(c, v);
}
$('file').addEventListener('change', (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
</script></body></html>
"""
