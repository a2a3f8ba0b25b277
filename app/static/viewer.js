// The study viewer's zoom and pan (client side: no server round trip) and the reading room's keys.
// Runs as the viewer's js_on_load: `element` is the viewer, `watch` re-runs a callback after each re-render
// (a new window or preset replaces the images; their zoom and pan are kept, per view).
const MIN_SCALE = 1;
const MAX_SCALE = 16;
const zoom = {};  // view position -> {scale, x, y}; x/y in screen pixels from the pane's centre

const stateOf = (pane) => (zoom[pane.dataset.position] ??= {scale: 1, x: 0, y: 0});

function show(pane) {
  const s = stateOf(pane);
  const img = pane.querySelector('img');
  if (img) img.style.transform = `translate(${s.x}px, ${s.y}px) scale(${s.scale})`;
  const label = pane.querySelector('.echo-zoom');
  if (label) label.textContent = `zoom ${Math.round(s.scale * 100)} %`;
}

const showAll = () => element.querySelectorAll('.echo-pane').forEach(show);

function resetZoom() {
  for (const key of Object.keys(zoom)) delete zoom[key];
  showAll();
}

// Wheel: zoom about the pointer (the point under it stays put).
element.addEventListener('wheel', (event) => {
  const pane = event.target.closest('.echo-pane');
  const stage = pane && pane.querySelector('.echo-stage');
  if (!stage) return;
  event.preventDefault();
  const s = stateOf(pane);
  const box = stage.getBoundingClientRect();
  const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, s.scale * Math.exp(-event.deltaY * 0.0015)));
  const px = event.clientX - box.left - box.width / 2;
  const py = event.clientY - box.top - box.height / 2;
  s.x = scale === 1 ? 0 : px - (px - s.x) * scale / s.scale;
  s.y = scale === 1 ? 0 : py - (py - s.y) * scale / s.scale;
  s.scale = scale;
  show(pane);
}, {passive: false});

// Drag: pan.
let drag = null;
element.addEventListener('pointerdown', (event) => {
  const pane = event.target.closest('.echo-pane');
  if (!pane || event.button !== 0 || !event.target.closest('.echo-stage')) return;
  const s = stateOf(pane);
  drag = {pane, x0: event.clientX - s.x, y0: event.clientY - s.y};
  event.target.setPointerCapture?.(event.pointerId);
  event.preventDefault();
});
element.addEventListener('pointermove', (event) => {
  if (!drag) return;
  const s = stateOf(drag.pane);
  s.x = event.clientX - drag.x0;
  s.y = event.clientY - drag.y0;
  show(drag.pane);
});
const endDrag = () => { drag = null; };
element.addEventListener('pointerup', endDrag);
element.addEventListener('pointercancel', endDrag);

element.addEventListener('click', (event) => {
  if (event.target.closest('.echo-reset-zoom')) resetZoom();
});
element.addEventListener('dblclick', (event) => {
  if (event.target.closest('.echo-stage')) resetZoom();
});

watch('value', showAll);

// Keys, only when the focus is not in a text box: 1/2/3/0 presets, i invert, r reset zoom, n/p next/previous
// study (the History tab's buttons, where the app has them).
const PRESET_KEYS = {'0': 'default', '1': 'lung', '2': 'mediastinum', '3': 'bone'};
const TEXT_INPUTS = new Set(['text', 'search', 'email', 'password', 'number', 'url', 'tel', 'date', 'datetime-local']);

function typing(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT') return true;
  return target.tagName === 'INPUT' && TEXT_INPUTS.has((target.type || 'text').toLowerCase());
}

const visible = (node) => node && node.offsetParent !== null;

// One document listener however often the viewer is mounted; it calls the latest mount's handler.
if (!window.__echoViewerKeys) document.addEventListener('keydown', (event) => window.__echoViewerKeys(event));
window.__echoViewerKeys = (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || typing(event.target)) return;
  const key = event.key.toLowerCase();
  let target = null;
  if (key === 'n' || key === 'p') {
    target = document.getElementById(key === 'n' ? 'next-study-btn' : 'prev-study-btn');
  } else if (!visible(element)) {
    return;  // the Draft tab is not on screen
  } else if (key === '0') {
    target = document.getElementById('reset-window-btn');  // also undoes a manual level/window
  } else if (key in PRESET_KEYS) {
    target = document.querySelector(`#window-preset input[value="${PRESET_KEYS[key]}"]`);
  } else if (key === 'i') {
    target = document.querySelector('#invert input');
  } else if (key === 'r') {
    resetZoom();
    event.preventDefault();
    return;
  }
  if (target) {
    target.click();
    event.preventDefault();
  }
};
