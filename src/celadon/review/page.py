"""The review page: server-rendered HTML (every value escaped) with a small script for keys and clicks."""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

import pandas as pd

from celadon.data.manifest import is_true
from celadon.review.store import Decision

_CSS = """
body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:8px 12px;z-index:2}
header form,header .bar{display:inline-flex;gap:6px;align-items:center;margin-right:14px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px;padding:12px}
.card{background:#fff;border:2px solid #ddd;border-radius:6px;padding:8px;outline:none}
.card.focused{border-color:#2a6fdb;box-shadow:0 0 0 2px #2a6fdb55}
.card.accepted{background:#eef8ee}.card.rejected{background:#fbeeee}
.card img.main{width:100%;image-rendering:pixelated;background:#ccc}
.refs img{width:31%;margin-right:2%;image-rendering:pixelated}
.meta{font-size:12px;color:#555;word-break:break-word}.qc-fail{color:#b00}.badge{font-weight:600}
.actions{display:flex;gap:4px;flex-wrap:wrap;margin-top:4px}
#hint{color:#555;font-size:12px}
"""

_SCRIPT = """
const csrf = document.querySelector('meta[name=csrf]').content;
const cards = [...document.querySelectorAll('.card')];
const reviewer = document.getElementById('reviewer');
reviewer.value = localStorage.getItem('celadon-reviewer') || '';
reviewer.addEventListener('change', () => localStorage.setItem('celadon-reviewer', reviewer.value.trim()));
let focusIndex = 0; const undoStack = [];
function focusCard(i) {
  if (!cards.length) return;
  focusIndex = Math.max(0, Math.min(cards.length - 1, i));
  cards.forEach((c, k) => c.classList.toggle('focused', k === focusIndex));
  cards[focusIndex].scrollIntoView({block: 'nearest'});
}
function show(card, d) {
  card.dataset.decision = d.decision; card.dataset.reason = d.reason || '';
  card.classList.toggle('accepted', d.decision === 'accepted');
  card.classList.toggle('rejected', d.decision === 'rejected');
  card.querySelector('.badge').textContent =
    d.decision === 'pending' ? 'pending' : d.decision + (d.reason ? ' (' + d.reason + ')' : '') + ' by ' + d.reviewer;
}
async function post(items, decision, reason, note) {
  const name = reviewer.value.trim();
  if (!name) { alert('Enter your name (top left) before reviewing.'); reviewer.focus(); return null; }
  const response = await fetch('/api/decide', {method: 'POST', headers: {'Content-Type': 'application/json',
    'X-CSRF-Token': csrf}, body: JSON.stringify({items, decision, reason, note, reviewer: name})});
  if (!response.ok) {
    document.getElementById('hint').textContent = 'not saved: ' + await response.text(); return null;
  }
  const body = await response.json();
  for (const d of body.decisions) { const c = document.getElementById('item-' + d.item_id); if (c) show(c, d); }
  const p = body.progress;
  document.getElementById('progress').textContent = p.reviewed + ' / ' + p.total + ' reviewed' +
    (p.pass_rate === null ? '' : ', pass rate ' + (100 * p.pass_rate).toFixed(1) + '%');
  return body;
}
async function decide(targets, decision, reason, note) {
  if (decision === 'rejected' && !reason) {
    document.getElementById('hint').textContent = 'choose a reason (keys 1-9 or the menu), then press r';
    return;
  }
  const before = targets.map(c => ({id: c.dataset.id, decision: c.dataset.decision || 'pending',
                                    reason: c.dataset.reason || null}));
  if (await post(targets.map(c => c.dataset.id), decision, reason, note || null)) {
    undoStack.push(before); document.getElementById('hint').textContent = 'saved';
  }
}
async function undo() {
  const before = undoStack.pop(); if (!before) return;
  for (const b of before) await post([b.id], b.decision, b.reason);
  document.getElementById('hint').textContent = 'undone';
}
function selected() { return cards.filter(c => c.querySelector('.pick').checked); }
cards.forEach((card, i) => {
  card.addEventListener('click', () => focusCard(i));
  card.querySelector('.accept').addEventListener('click', () => decide([card], 'accepted'));
  card.querySelector('.reject').addEventListener('click',
    () => decide([card], 'rejected', card.querySelector('.reason').value, card.querySelector('.note').value));
});
document.getElementById('bulk-accept').addEventListener('click', () => decide(selected(), 'accepted'));
document.getElementById('bulk-reject').addEventListener('click',
  () => decide(selected(), 'rejected', document.getElementById('bulk-reason').value));
document.getElementById('select-all').addEventListener('click',
  () => cards.forEach(c => c.querySelector('.pick').checked = true));
document.getElementById('undo').addEventListener('click', undo);
document.addEventListener('keydown', e => {
  if (['INPUT', 'SELECT', 'TEXTAREA'].includes(e.target.tagName) || e.ctrlKey || e.metaKey || e.altKey) return;
  const card = cards[focusIndex]; if (!card) return;
  if (e.key === 'ArrowRight' || e.key === 'ArrowDown') focusCard(focusIndex + 1);
  else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') focusCard(focusIndex - 1);
  else if (e.key === 'a') decide([card], 'accepted');
  else if (e.key === 'r') {
    decide([card], 'rejected', card.querySelector('.reason').value, card.querySelector('.note').value);
  }
  else if (e.key === 'x') { const box = card.querySelector('.pick'); box.checked = !box.checked; }
  else if (e.key === 'u') undo();
  else if (/^[1-9]$/.test(e.key) && Number(e.key) < card.querySelector('.reason').options.length) {
    card.querySelector('.reason').selectedIndex = Number(e.key); }
  else return;
  e.preventDefault();
});
focusCard(0);
"""


def _options(values, chosen: str, blank: str) -> str:
    items = [f'<option value="">{escape(blank)}</option>']
    items += [f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in values]
    return "".join(items)


def _percent(rate: float | None, digits: int = 0) -> str:
    return "" if rate is None else f"{100 * rate:.{digits}f}%"


def _filter(items: pd.DataFrame, current: dict[str, Decision], filters: dict[str, str]) -> pd.DataFrame:
    keep = pd.Series(True, index=items.index)
    if filters["combo"]:
        keep &= items["combination"] == filters["combo"]
    if filters["purpose"]:
        keep &= items["purpose"].astype(str) == filters["purpose"]
    if filters["qc"]:
        passed = items["qc_pass"].map(is_true)
        keep &= passed if filters["qc"] == "pass" else ~passed
    if filters["decision"]:
        decisions = items["item_id"].map(lambda i: current[i].decision if i in current else "pending")
        keep &= decisions == filters["decision"]
    return items[keep]


def _card(row: dict, decision: Decision | None, references: list[int], tasks: list[str],
          reasons: tuple[str, ...]) -> str:
    item = escape(str(row["item_id"]))
    state = decision.decision if decision else "pending"
    badge = "pending" if not decision else (
        f"{decision.decision}{f' ({decision.reason})' if decision.reason else ''} by {decision.reviewer}")
    labels = " · ".join(escape(str(row[t])) for t in tasks if t in row and pd.notna(row[t]))
    qc_pass = is_true(row.get("qc_pass"))
    qc = "" if pd.isna(row.get("qc_pass")) else (
        '<div class="meta">QC: pass</div>' if qc_pass else
        f'<div class="meta qc-fail">QC: {escape(str(row.get("qc_reasons") or "fail"))}</div>')
    refs = "".join(f'<img src="/image/real/{n}" alt="real reference">' for n in references)
    return f"""<div class="card {state}" id="item-{item}" data-id="{item}" data-decision="{state}"
 data-reason="{escape(decision.reason or '') if decision else ''}" tabindex="-1">
<img class="main" src="/image/synthetic/{item}" alt="generated {item}">
<div><label><input type="checkbox" class="pick"> <b>{item}</b></label> <span class="badge">{escape(badge)}</span></div>
<div class="meta">{labels}</div>
<div class="meta" title="prompt">{escape(str(row.get("prompt", "")))}</div>
<div class="meta">seed {escape(str(row.get("seed", "")))} · {escape(str(row.get("purpose") or ""))}</div>{qc}
<div class="refs">{refs}</div>
<div class="actions"><button class="accept">accept (a)</button><select class="reason">{_options(reasons, "", "reason…")}
</select><button class="reject">reject (r)</button><input class="note" placeholder="note (for other)" size="14"
 aria-label="note"></div></div>"""


def render_page(review, current: dict[str, Decision], stats: dict, csrf: str, filters: dict[str, str]) -> str:
    items = review.items
    shown = _filter(items, current, filters)
    rate = "" if stats["pass_rate"] is None else f", pass rate {_percent(stats['pass_rate'], 1)}"
    combos = "".join(
        f"<tr><td><a href='/?{escape(urlencode({'combo': c}))}'>{escape(c)}</a></td>"
        f"<td>{s['reviewed']}/{s['total']}</td><td>{_percent(s['pass_rate'])}</td></tr>"
        for c, s in stats["combinations"].items())
    cards = "".join(_card(row, current.get(row["item_id"]), review.references_by_combo.get(row["combination"], []),
                          review.taxonomy.task_names, review.reasons)
                    for row in shown.to_dict("records"))
    sources = sorted(str(s) for s in items["purpose"].dropna().unique())
    reasons = _options(review.reasons, "", "reason…")
    combinations = sorted(items["combination"].unique())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>celadon review</title>
<meta name="csrf" content="{escape(csrf)}"><link rel="icon" href="data:,"><style>{_CSS}</style></head><body>
<header><div class="bar"><input id="reviewer" placeholder="your name" size="12" aria-label="reviewer">
<span id="progress">{stats['reviewed']} / {stats['total']} reviewed{rate}</span></div>
<form method="get"><select name="combo">{_options(combinations, filters['combo'], 'all combinations')}</select>
<select name="purpose">{_options(sources, filters['purpose'], 'all purposes')}</select>
<select name="qc">{_options(['pass', 'fail'], filters['qc'], 'any QC')}</select>
<select name="decision">{_options(['pending', 'accepted', 'rejected'], filters['decision'], 'any decision')}</select>
<button>filter</button></form>
<div class="bar"><button id="select-all">select all</button><button id="bulk-accept">accept selected</button>
<select id="bulk-reason">{reasons}</select><button id="bulk-reject">reject selected</button>
<button id="undo">undo (u)</button><a href="/export.csv">export CSV</a></div>
<div id="hint">keys: arrows move · a accept · 1-9 reason then r reject · x select · u undo ·
showing {len(shown)} of {len(items)}</div>
<details><summary>pass rate per combination</summary><table>{combos}</table></details></header>
<main id="grid">{cards}</main><script>{_SCRIPT}</script></body></html>"""
