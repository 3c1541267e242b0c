// diffvqa evaluation viewer: filters, sorting, pagination and a detail view over window.DIFFVQA_DATA (data.js).
// Plain JavaScript, no dependencies, no network: the page works from file://. Text from the data is only ever
// set through textContent, never parsed as HTML.
"use strict";

(function () {
  const PAGE_SIZE = 50;
  const HIT = 0.5; // a pointing-game score of at least this counts as a hit (fair ties give fractions)
  const D = window.DIFFVQA_DATA;
  const $ = (id) => document.getElementById(id);

  if (!D || !Array.isArray(D.rows)) {
    const error = $("error");
    error.hidden = false;
    error.textContent = "data.js is missing or broken: re-run `diffvqa view EVAL_DIR` to write it.";
    return;
  }
  const S = D.strings;
  const runs = D.runs;
  const compare = runs.length === 2;

  // rows -> objects once; a row's runs[r] is null when that evaluation did not ask the question
  const questions = D.rows.map((row, i) => ({
    id: i,
    study: S[row[0]], ref: S[row[1]], subject: S[row[2]], type: S[row[3]],
    question: S[row[4]], answer: S[row[5]], split: S[row[6]],
    runs: row[7].map((a) => a === null ? null : {
      line: a[0], preliminary: S[a[1]], keyword: S[a[2]], final: S[a[3]],
      exact: a[4] === 1, meteor: a[5], pointing: a[6], boxes: a[7] === undefined ? null : a[7],
    }),
    disagree: row[8] === 1,
  }));
  for (const q of questions) {
    q.text = [q.study, q.ref, q.subject, q.question, q.answer,
      ...q.runs.flatMap((a) => a ? [a.preliminary, a.keyword, a.final] : [])].join("\n").toLowerCase();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(child === null ? "—" : String(child)));
    }
    return node;
  }

  function fmt(x) { return x === null || x === undefined ? "—" : Number(x).toFixed(3); }
  function pad(n, width) { return String(n).padStart(width, "0"); }
  // must match diffvqa.viewer.strips.strip_path
  function stripSrc(r, line) {
    const base = runs[r].images;
    return base === null ? null : `${base}/img/${pad(Math.floor(line / 1000), 3)}/${pad(line, 6)}.jpg`;
  }

  // ---- filters ------------------------------------------------------------------------------------------
  function options(select, items) {
    select.replaceChildren(...items.map(([value, label]) => el("option", { value }, label)));
  }
  const distinct = (values) => [...new Set(values)].sort();
  options($("f-type"), [["", "all"], ...distinct(questions.map((q) => q.type)).map((t) => [t, t])]);
  const keywords = distinct(questions.flatMap((q) => q.runs.filter(Boolean).map((a) => a.keyword)));
  options($("f-keyword"), [["", "all"], ...keywords.map((k) => [k, k === "" ? "(none: whole answer)" : k])]);
  options($("f-split"), [["", "all"], ...distinct(questions.map((q) => q.split)).map((s) => [s, s])]);
  const name = (r) => runs[r].name;
  const correct = [["", "all"], ["right", `right (${name(0)})`], ["wrong", `wrong (${name(0)})`]];
  if (compare) {
    correct.push(["disagree", "they disagree"], ["right-wrong", `${name(0)} right, ${name(1)} wrong`],
      ["wrong-right", `${name(0)} wrong, ${name(1)} right`]);
  }
  options($("f-correct"), correct);
  options($("f-pointing"), [["", "all"], ["hit", "hit"], ["miss", "miss"], ["none", "no score (no ground truth)"]]);
  const sorts = [["order", "evaluation order"], ["meteor-asc", "METEOR_nltk, worst first"],
    ["meteor-desc", "METEOR_nltk, best first"], ["pointing-asc", "pointing game, worst first"],
    ["pointing-desc", "pointing game, best first"]];
  if (compare) sorts.push(["delta-asc", `METEOR_nltk ${name(1)} − ${name(0)}, lowest first`],
    ["delta-desc", `METEOR_nltk ${name(1)} − ${name(0)}, highest first`]);
  options($("f-sort"), sorts);

  function state() {
    return {
      type: $("f-type").value, keyword: $("f-keyword").value, split: $("f-split").value,
      correct: $("f-correct").value, pointing: $("f-pointing").value, sort: $("f-sort").value,
      search: $("f-search").value.trim().toLowerCase(),
    };
  }

  function keep(q, s) {
    const a = q.runs[0] || q.runs[1];
    if (s.type && q.type !== s.type) return false;
    if (s.split && q.split !== s.split) return false;
    if (s.keyword && !q.runs.some((x) => x && x.keyword === s.keyword)) return false;
    if (s.search && !q.text.includes(s.search)) return false;
    const [x, y] = q.runs;
    switch (s.correct) {
      case "right": if (!(x && x.exact)) return false; break;
      case "wrong": if (!(x && !x.exact)) return false; break;
      case "disagree": if (!q.disagree) return false; break;
      case "right-wrong": if (!(x && y && x.exact && !y.exact)) return false; break;
      case "wrong-right": if (!(x && y && !x.exact && y.exact)) return false; break;
    }
    const p = a.pointing;
    if (s.pointing === "hit" && !(p !== null && p >= HIT)) return false;
    if (s.pointing === "miss" && !(p !== null && p < HIT)) return false;
    if (s.pointing === "none" && p !== null) return false;
    return true;
  }

  function sortKey(q, sort) {
    const [x, y] = q.runs;
    if (sort.startsWith("meteor")) return x ? x.meteor : null;
    if (sort.startsWith("pointing")) return x ? x.pointing : null;
    if (sort.startsWith("delta")) return x && y ? y.meteor - x.meteor : null;
    return q.id;
  }

  // The boxes column only when some evaluation scored against boxes: a column of dashes is noise.
  const hasBoxes = questions.some((q) => q.runs.some((a) => a && a.boxes !== null && a.boxes !== undefined));
  let view = questions; // the filtered, sorted questions
  let page = 0;
  let open = -1; // position in `view` of the question in the detail view

  function apply() {
    const s = state();
    view = questions.filter((q) => keep(q, s));
    if (s.sort !== "order") {
      const sign = s.sort.endsWith("desc") ? -1 : 1;
      // questions without the score go last, in evaluation order
      view.sort((p, q) => {
        const a = sortKey(p, s.sort), b = sortKey(q, s.sort);
        if (a === null || b === null) return (a === null) - (b === null) || p.id - q.id;
        return sign * (a - b) || p.id - q.id;
      });
    }
    page = 0;
    render();
  }

  // ---- the list -----------------------------------------------------------------------------------------
  function renderHead() {
    const cells = ["#", "study / reference", "type", "question", "reference answer"];
    runs.forEach((run) => cells.push(`final: ${run.name}`, "METEOR_nltk", "pointing",
      ...(hasBoxes ? ["pointing (boxes)"] : []), "pictures"));
    $("list-head").replaceChildren(el("tr", {}, ...cells.map((c) => el("th", {}, c))));
  }

  function runCells(q, r) {
    const a = q.runs[r];
    if (!a) return [el("td", { class: "missing" }, "not asked"), el("td"), el("td"), ...(hasBoxes ? [el("td")] : []), el("td")];
    const src = stripSrc(r, a.line);
    const thumb = src === null ? "—" : el("img", { src, loading: "lazy", alt: "pictures", class: "thumb" });
    return [
      el("td", { class: a.exact ? "final right" : "final wrong", "data-run": r }, a.exact ? "✓ " : "✗ ", a.final),
      el("td", { class: "num" }, fmt(a.meteor)),
      el("td", { class: "num" }, fmt(a.pointing)),
      ...(hasBoxes ? [el("td", { class: "num" }, fmt(a.boxes))] : []),
      el("td", {}, thumb),
    ];
  }

  function render() {
    const pages = Math.max(1, Math.ceil(view.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    $("count").textContent = `${view.length.toLocaleString("en")} of ${questions.length.toLocaleString("en")} questions`;
    $("page").textContent = `page ${page + 1} of ${pages}`;
    $("prev-page").disabled = page === 0;
    $("next-page").disabled = page >= pages - 1;
    const rows = view.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).map((q, i) => {
      const tr = el("tr", { class: "row", "data-id": q.id },
        el("td", { class: "num" }, q.id + 1),
        el("td", { class: "ids" }, `${q.study} / ${q.ref}`),
        el("td", {}, q.type),
        el("td", {}, q.question),
        el("td", {}, q.answer),
        ...runs.flatMap((_, r) => runCells(q, r)));
      tr.addEventListener("click", () => showDetail(page * PAGE_SIZE + i));
      return tr;
    });
    $("list-body").replaceChildren(...rows);
  }

  // ---- the detail view ----------------------------------------------------------------------------------
  function showDetail(position) {
    if (view.length === 0) return;
    open = (position + view.length) % view.length;
    const q = view[open];
    $("detail-position").textContent = `${open + 1} of ${view.length}`;
    $("detail-ids").textContent = `subject ${q.subject} · study ${q.study} · reference ${q.ref} · ${q.type} · ${q.split}`;
    $("detail-question").textContent = q.question;
    $("detail-reference").textContent = q.answer;
    $("detail-runs").replaceChildren(...runs.map((run, r) => detailRun(q, r)));
    $("detail").hidden = false;
    page = Math.floor(open / PAGE_SIZE);
    render();
  }

  function detailRun(q, r) {
    const a = q.runs[r];
    const box = el("section", { class: "detail-run", "data-run": r }, el("h3", {}, runs[r].name));
    if (!a) {
      box.append(el("p", { class: "missing" }, "this evaluation did not ask this question"));
      return box;
    }
    const src = stripSrc(r, a.line);
    if (src === null) {
      box.append(el("p", { class: "missing" }, "no pictures: this evaluation was written without the viewer"));
    } else {
      box.append(el("img", { src, class: "strip", alt: "pictures of this question" }),
        el("div", { class: "captions" }, ...D.panels.map((c) => el("span", {}, c))));
    }
    const rows = [
      ["keyword", a.keyword === "" ? "(none: the CAM scored the whole answer)" : a.keyword, "detail-keyword"],
      ["preliminary answer (pass 1)", a.preliminary, "detail-preliminary"],
      ["final answer (pass 2)", a.final, "detail-final"],
      ["exact match", a.exact ? "✓ right" : "✗ wrong", `detail-exact ${a.exact ? "right" : "wrong"}`],
      ["METEOR_nltk", fmt(a.meteor), "detail-meteor"],
      ["pointing game", a.pointing === null ? "— (no score in predictions.jsonl)" : fmt(a.pointing), "detail-pointing"],
      ...(hasBoxes ? [["pointing game, against the changed regions' boxes",
        a.boxes === null ? "— (no changed region with a box)" : fmt(a.boxes), "detail-boxes"]] : []),
      ["line in predictions.jsonl", a.line + 1, "detail-line"],
    ];
    box.append(el("table", { class: "qa" }, ...rows.map(([k, v, cls]) =>
      el("tr", {}, el("th", {}, k), el("td", { class: cls }, v)))));
    return box;
  }

  function closeDetail() { $("detail").hidden = true; open = -1; }

  // ---- wiring -------------------------------------------------------------------------------------------
  for (const id of ["f-type", "f-keyword", "f-split", "f-correct", "f-pointing", "f-sort"]) {
    $(id).addEventListener("change", apply);
  }
  $("f-search").addEventListener("input", apply);
  $("prev-page").addEventListener("click", () => { page -= 1; render(); });
  $("next-page").addEventListener("click", () => { page += 1; render(); });
  $("detail-prev").addEventListener("click", () => showDetail(open - 1));
  $("detail-next").addEventListener("click", () => showDetail(open + 1));
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (e) => {
    if ($("detail").hidden || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if (e.key === "ArrowRight" || e.key === "j") showDetail(open + 1);
    else if (e.key === "ArrowLeft" || e.key === "k") showDetail(open - 1);
    else if (e.key === "Escape") closeDetail();
  });

  if (D.data_use) {  // outputs of credentialed data: the PhysioNet agreement forbids sharing them
    $("data-use").textContent = `⚠ ${D.data_use}`;
    $("data-use").hidden = false;
  }
  $("title").textContent = D.title;
  document.title = `${D.title} — diffvqa viewer`;
  $("runs").replaceChildren(...runs.map((run) => el("p", { class: "run" },
    el("b", {}, run.name), ` · ${run.split} split · ${run.mode} · ${run.questions.toLocaleString("en")} questions`
    + ` · difference: METEOR ${fmt(run.difference.METEOR)} (jar, corpus) · METEOR_nltk ${fmt(run.difference.METEOR_nltk)}`
    + ` (sentence mean) · CIDEr ${fmt(run.difference.CIDEr)}` + (run.images === null ? " · no pictures" : ""))));
  // the saliency against the datasets' boxes, each score beside its reference levels; too few pairs are marked
  for (const run of runs) {
    for (const b of run.boxes || []) {
      const few = b.enough === false ? ` — fewer than ${run.min_scored} ${b.unit}: too few to read` : "";
      $("runs").append(el("p", { class: b.enough === false ? "run boxes few" : "run boxes" },
        `${run.name} · pointing game against boxes, ${b.label}: ${fmt(b.score)} (chance ${fmt(b.chance)}, `
        + `fixed-point prior ${fmt(b.prior)}, ceiling ${fmt(b.ceiling)}) on ${b.count} ${b.unit}${few}`));
    }
  }
  renderHead();
  apply();
})();
