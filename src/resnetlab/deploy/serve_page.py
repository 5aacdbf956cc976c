"""The web page `serve` answers at `/`: choose or drop an image, see it, its class probabilities and the verdict.
Self-contained (no CDN): plain HTML, CSS bars and fetch()."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnetlab</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; max-width: 760px; margin: 24px auto; padding: 0 16px; color: #222 }
#drop { border: 2px dashed #999; border-radius: 8px; padding: 28px; text-align: center; cursor: pointer }
#drop.over { background: #eef5ff } img#preview { max-width: 240px; max-height: 240px; margin: 12px 0; display: none }
.row { display: flex; align-items: center; margin: 3px 0 } .name { width: 260px; overflow: hidden; white-space: nowrap }
.bar { height: 16px; background: #4a90d9; margin-right: 8px } #verdict { font-size: 20px; font-weight: 600; margin: 10px 0 }
#verdict.unknown { color: #b00 } #error { color: #b00 }
</style></head><body>
<h1>resnetlab</h1>
<p id="model">loading...</p>
<div id="drop">Drop an image here, or <label><u>choose one</u><input id="file" type="file" accept="image/*" hidden></label></div>
<img id="preview" alt="your image">
<div id="verdict"></div><div id="bars"></div><div id="error"></div>
<script>
const $ = (id) => document.getElementById(id);
fetch('/health').then(r => r.json()).then(h => { $('model').textContent = h.classes + ' classes, ' + h.image_size + ' px'; });
async function classify(file) {
  $('error').textContent = ''; $('verdict').textContent = '...'; $('bars').innerHTML = '';
  $('preview').src = URL.createObjectURL(file); $('preview').style.display = 'block';
  const form = new FormData(); form.append('files', file, file.name);
  const response = await fetch('/predict?topk=5', { method: 'POST', body: form });
  const body = await response.json();
  if (!response.ok) { $('verdict').textContent = ''; $('error').textContent = body.error; return; }
  const p = body.predictions[0];
  $('verdict').textContent = p.rejected ? 'unknown (no class is likely enough)' : p.verdict;
  $('verdict').className = p.rejected ? 'unknown' : '';
  for (const t of p.top) {
    const row = document.createElement('div'); row.className = 'row';
    const name = document.createElement('span'); name.className = 'name'; name.textContent = t['class'];
    const bar = document.createElement('span'); bar.className = 'bar'; bar.style.width = Math.round(300 * t.probability) + 'px';
    const value = document.createElement('span'); value.textContent = (100 * t.probability).toFixed(1) + '%';
    row.append(name, bar, value); $('bars').append(row);
  }
  document.body.dataset.done = 'yes';
}
$('file').addEventListener('change', (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); });
</script></body></html>
"""
