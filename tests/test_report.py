"""The HTML report: sections with the run's numbers, escaping, redaction, re-rendering from JSON."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import plugin
from markupsafe import escape
from report_helpers import DATA_URI, PAYLOAD, body, decode_images, hostile, mitigation_results, nearest_member_rms

SCAN_SECTIONS = ("verdict", "membership", "replication", "quality", "rules", "limits", "provenance")


class Outline(HTMLParser):
    """Headings, images, SVGs, scripts and every URL-bearing attribute of a page."""

    def __init__(self):
        super().__init__()
        self.headings: list[int] = []
        self.imgs: list[dict] = []
        self.svgs: list[dict] = []
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._in_svg = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "img":
            self.imgs.append(a)
        if tag == "svg":
            self.svgs.append(a)
            self._in_svg = True
        if tag == "title" and self._in_svg:
            self.svgs[-1]["has_title"] = True
        if "id" in a:
            self.ids.append(a["id"])
        for k in ("src", "href", "action", "srcset", "poster", "data"):
            if k in a and a[k] is not None:
                self.urls.append(a[k])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._in_svg = False


def outline(html: str) -> Outline:
    o = Outline()
    o.feed(html)
    return o


def render(results: dict, **kw) -> str:
    from privaudit.reports import render_html

    return render_html(body(results), **kw)


def assert_self_contained_and_accessible(html: str) -> Outline:
    assert "could not be rendered" not in html
    o = outline(html)
    assert "script" not in o.tags and "<script" not in html.lower()
    assert not re.search(r"""url\(\s*['"]?(?!data:)""", html), "CSS must not load anything"
    for u in o.urls:  # only in-page anchors and embedded images
        assert u.startswith("#") or u.startswith("data:image/png;base64,"), u
    assert o.headings[0] == 1 and o.headings.count(1) == 1
    for prev, cur in zip(o.headings, o.headings[1:]):
        assert cur <= prev + 1, f"heading level jumps from h{prev} to h{cur}"
    for img in o.imgs:
        assert img.get("alt"), img
    for s in o.svgs:
        assert s.get("role") == "img" and s.get("aria-labelledby") and s.get("has_title"), s
    assert len(o.ids) == len(set(o.ids)), "duplicate ids"
    return o


def test_scan_report_shows_every_section_with_the_runs_numbers(digits_scan):
    html = render(digits_scan)
    o = assert_self_contained_and_accessible(html)
    for sid in SCAN_SECTIONS:
        assert sid in o.ids
    level = digits_scan["verdict"]["level"]
    assert re.search(rf'<span class="badge {level} big">{level}</span>', html)
    loss, nn = plugin(digits_scan, "loss"), plugin(digits_scan, "nn")
    assert f"{loss['metrics']['auc']['value']:.3f}" in html
    assert f"{100 * loss['metrics']['tpr_at_fpr_0.01']['value']:.1f}%" in html
    assert f"{100 * nn['metrics']['copy_fraction']['value']:.1f}%" in html
    for rule in loss["details"]["rules"] + nn["details"]["rules"]:  # one sentence per rule that fired
        assert str(escape(rule)) in html
    # every closest pair is shown with its images (generated, member, ...) and its member id
    pairs = nn["details"]["pairs"]
    assert len(o.imgs) >= 2 * len(pairs)
    for p in pairs:
        assert p["member_id"] in html
    # the log-log ROC and a score histogram per attack
    assert "ROC curves, log-log scale" in html and "attack scores, members vs holdout" in html
    # data checks, including the blind baseline
    for c in digits_scan["checks"]:
        assert str(escape(c["message"])) in html
    # thresholds in the rule table come from the code that applies them
    from privaudit.io import verdict

    assert f"TPR at 1% FPR &gt;= {verdict.TPR_CRITICAL:.2f}" in html
    assert f"copy fraction &gt;= {verdict.COPY_HIGH:.0%}" in html
    # provenance: the manifest and the weights hash
    sha = next(iter(digits_scan["target"]["weights_sha256"].values()))
    assert sha in html and "Run manifest (JSON)" in html


def test_file_names_and_user_strings_are_shown_as_text(digits_target, digits_scan, tmp_path):
    """A real scan whose most-copied member is named ``<script>alert(1)</script>.png``."""
    from conftest import run_scan

    victim = plugin(digits_scan, "nn")["details"]["pairs"][0]["member_id"]
    target = tmp_path / "target"
    target.mkdir()
    for name in ("model", "holdout", "reference"):
        (target / name).symlink_to(digits_target / name, target_is_directory=True)
    shutil.copytree(digits_target / "members", target / "members")
    bad = target / "members" / PAYLOAD  # the "/" in the name makes a folder: the image id is the relative path
    bad.parent.mkdir(parents=True)
    (target / "members" / victim).rename(bad)
    results = run_scan(target, tmp_path / "run", attacks=(), detectors=("nn",))  # samples cached by digits_scan
    assert PAYLOAD in json.dumps(results["plugins"])  # the id made it into the results
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert_self_contained_and_accessible(html)


@pytest.mark.parametrize("kind", ["scan", "mitigation"])
def test_hostile_results_cannot_inject_markup(digits_scan, null_scan, kind):
    from privaudit.reports import render_html

    r = hostile(digits_scan)
    if kind == "mitigation":
        r = mitigation_results(r, hostile(null_scan))
    html = render_html(r)
    assert "<script" not in html.lower() and "<img src=x" not in html and "javascript:" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert_self_contained_and_accessible(html)


def _members(digits_target) -> np.ndarray:
    from privaudit.data.sets import load_images

    return load_images(digits_target / "members", name="members").uint8()[:, 0]


def _holdout_floor(digits_target, members: np.ndarray) -> float:
    """How close real unseen digits come to a member: the 1% quantile of their nearest-member RMS."""
    from privaudit.data.sets import load_images

    hold = load_images(digits_target / "holdout", name="holdout").uint8()[:, 0]
    return float(np.quantile([nearest_member_rms(h, members) for h in hold], 0.01))


def test_redaction_controls_which_training_images_the_file_holds(digits_target, digits_scan):
    from privaudit.reports.images import THUMB_PX

    members = _members(digits_target)
    floor = _holdout_floor(digits_target, members)
    assert floor > 0.02

    thumbs = decode_images(render(digits_scan, redact="thumbnails"))
    assert thumbs and max(max(i.shape[:2]) for i in thumbs) <= THUMB_PX
    # positive control: the default report really shows members (so the comparisons below can see them)
    assert min(nearest_member_rms(i, members) for i in thumbs) < 0.01

    blurred = decode_images(render(digits_scan, redact="blur"))
    assert len(blurred) == len(thumbs)
    # every image is further from every member than real unseen digits usually are: none shows a member
    assert min(nearest_member_rms(i, members) for i in blurred) > floor

    omitted = render(digits_scan, redact="omit")
    assert DATA_URI.findall(omitted) == [] and "<img" not in omitted
    assert "Images omitted" in omitted and plugin(digits_scan, "nn")["details"]["pairs"][0]["member_id"] in omitted


def test_a_run_written_with_omit_holds_no_image_in_any_file(digits_scan, tmp_path):
    from privaudit.audit.runner import write_run

    out = write_run(tmp_path / "run", digits_scan, redact="omit")
    for f in out.iterdir():
        assert "data:image" not in f.read_text(), f.name
    assert plugin(json.loads((out / "results.json").read_text()), "nn")["details"]["pairs"]  # the pairs stay, as ids


def test_images_of_unknown_origin_are_treated_as_training_images(digits_scan):
    from privaudit.reports import render_html
    from privaudit.reports.images import decode_uri

    r = body(digits_scan)
    pair = plugin(r, "nn")["details"]["pairs"][0]
    r["plugins"][0]["details"]["extra_png"] = pair["member_png"]  # a third-party key the report does not know
    html = render_html(r, redact="omit")
    assert DATA_URI.findall(html) == []
    member = np.asarray(decode_uri(pair["member_png"]).convert("L"))
    blurred = [np.asarray(decode_uri(u).convert("L")) for u in DATA_URI.findall(render_html(r, redact="blur"))]
    assert not any(b.shape == member.shape and np.array_equal(b, member) for b in blurred)


def test_report_cli_rerenders_scan_baseline_and_mitigation(digits_scan, null_scan, tmp_path):
    from privaudit.cli import main
    from privaudit.io.files import write_json

    a, b, m = tmp_path / "today", tmp_path / "yesterday", tmp_path / "mitigation"
    write_json(a / "results.json", body(null_scan))
    write_json(b / "results.json", body(digits_scan))
    write_json(m / "results.json", mitigation_results(digits_scan, null_scan))

    assert main(["report", str(a), "--baseline", str(b), "--redact", "omit"]) == 0
    html = (a / "report.html").read_text()
    o = assert_self_contained_and_accessible(html)
    assert "comparison" in o.ids and "Comparison with the baseline run" in html
    assert DATA_URI.findall(html) == []
    before = plugin(digits_scan, "nn")["metrics"]["copy_fraction"]["value"]
    after = plugin(null_scan, "nn")["metrics"]["copy_fraction"]["value"]
    assert f"{100 * (after - before):+.1f} pts" in html  # the delta, computed from the two runs
    for level in (digits_scan["verdict"]["level"], null_scan["verdict"]["level"]):
        assert f'<span class="badge {level}">{level}</span>' in html

    assert main(["report", str(m)]) == 0
    html = (m / "report.html").read_text()
    o = assert_self_contained_and_accessible(html)
    assert "before-after" in o.ids
    for text in ("Controls: is the effect real?", "placebo guard", "rejection sampling", "recommended: ",
                 "Privacy / quality trade-off", "Guard classifier", "White-box attacks", "guard stand-in warning",
                 "At matched quality", "beats placebo", "x9.00", "a white-box attacker bypasses the guard",
                 "privaudit mitigate MODEL --method cpsample"):
        assert text in html, text
    assert "huge" not in html  # per-control details stay in results.json
    assert html.count("Trade-off: ") == 2  # copies and membership AUC, each against quality
    rec = re.findall(r'<tr class="recommended"><td>(\d+)</td>', html)
    assert rec == ["3"]  # the recommended sweep row is highlighted, and only it

    assert main(["report", str(tmp_path / "missing")]) == 2


def test_partial_and_foreign_results_render_with_not_run_sections():
    from privaudit.reports import render_html

    for r in ({}, {"kind": "scan"}, {"kind": "mitigation"},
              {"kind": "scan", "plugins": [
                  {"name": "loss", "kind": "attack", "status": "error", "reason": "RuntimeError: boom"},
                  {"name": "nn", "kind": "detector", "status": "skipped", "reason": "target lacks sampling"},
                  {"name": "weird", "kind": "attack", "status": "ok", "metrics": {"auc": 0.7}, "details": []}],
               "verdict": {"level": "low"}, "ensemble": {"metrics": {}}, "checks": ["not a dict"]}):
        html = render_html(r)
        assert_self_contained_and_accessible(html)
        assert "Not run" in html or "RuntimeError: boom" in html
    html = render_html({"kind": "scan", "plugins": [
        {"name": "nn", "kind": "detector", "status": "skipped", "reason": "target lacks sampling"}]})
    assert "target lacks sampling" in html and "Not run: no membership attack" in html


def test_a_malformed_part_costs_its_section_not_the_report(digits_scan):
    from privaudit.reports import render_html

    r = body(digits_scan)
    plugin(r, "nn")["details"]["pairs"] = [{"sample": 1, "distance": "far", "member_png": 3}]
    plugin(r, "loss")["details"]["roc"] = {"fpr": [0.0, "x"], "tpr": [0.0, 1.0]}
    html = render_html(r)
    assert "could not be rendered" in html and "Verdict" in html and "Provenance" in html


def test_rendering_is_deterministic(digits_scan, null_scan):
    from privaudit.reports import render_html

    r = mitigation_results(digits_scan, null_scan)
    assert render_html(r) == render_html(r)


def test_bad_redact_mode_is_an_input_error(digits_scan):
    from privaudit.io.errors import InputError
    from privaudit.reports import render_html

    with pytest.raises(InputError, match="--redact"):
        render_html(body(digits_scan), redact="pixelate")


def test_prompt_examples_and_record_lists_render_and_redact(digits_scan):
    """Detectors that report examples (a prompt with its generations) or record lists render generically."""
    from privaudit.reports import render_html

    r = body(digits_scan)
    png = plugin(r, "nn")["details"]["pairs"][0]["member_png"]
    r["plugins"].append({
        "name": "promptcopy", "kind": "detector", "status": "ok", "severity": "low", "threat_model": "black-box",
        "metrics": {"copy_fraction": {"value": 0.25, "ci": [0.1, 0.4]}}, "finding": "prompt copies",
        "details": {"examples": [{"prompt": "a digit <b>one</b>", "max_clique": 3, "generations_png": [png, png, png],
                                  "nearest_member_png": png, "nearest_member_id": "members_0001.png"}],
                    "top": [{"prompt": "a digit seven", "score": 0.91, "flagged": True}]}})
    html = render_html(r)
    assert "a digit &lt;b&gt;one&lt;/b&gt;" in html and "a digit seven" in html and "max clique" in html
    assert len(DATA_URI.findall(html)) >= len(DATA_URI.findall(render_html(body(digits_scan)))) + 4
    omitted = render_html(r, redact="omit")
    assert DATA_URI.findall(omitted) == [] and "generations withheld" in omitted


def _every_embedded_image(folder) -> dict:
    """file name -> every ``data:image`` payload in it, decoded (any text file, anywhere in the folder)."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = f.read_text(errors="replace")
        uris = re.findall(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", text)
        out[str(f.relative_to(folder))] = decode_images(" ".join(uris))
        assert len(out[str(f.relative_to(folder))]) == len(uris), f  # nothing hidden in an undecodable form
    return out


@pytest.mark.parametrize("mode", ["omit", "blur"])
def test_rerendering_with_redact_redacts_every_file_of_the_run(digits_target, digits_scan, tmp_path, mode):
    from privaudit.audit.runner import write_run
    from privaudit.cli import main

    run = tmp_path / "run"
    write_run(run, digits_scan)  # a mitigation-style folder: a top-level results.json and sub-runs
    write_run(run / "before", digits_scan)
    write_run(run / "after", digits_scan, baseline=body(digits_scan))
    pair = plugin(digits_scan, "nn")["details"]["pairs"][0]
    (run / "extra.csv").write_text(f"member_id,member_png\n{pair['member_id']},{pair['member_png']}\n")
    members = _members(digits_target)
    before = _every_embedded_image(run)
    # positive control: the thumbnail run holds member images in results.json, the reports and the CSV
    for name in ("results.json", "before/results.json", "after/report.html", "extra.csv"):
        assert min(nearest_member_rms(i, members) for i in before[name]) < 0.01, name

    assert main(["report", str(run), "--redact", mode]) == 0
    after = _every_embedded_image(run)
    if mode == "omit":
        assert {k: len(v) for k, v in after.items() if v} == {}
    else:
        floor = _holdout_floor(digits_target, members)
        shown = [i for imgs in after.values() for i in imgs]
        assert shown and min(nearest_member_rms(i, members) for i in shown) > floor
    assert plugin(json.loads((run / "results.json").read_text()), "nn")["details"]["pairs"]  # ids stay


def test_report_out_writes_elsewhere_and_leaves_the_run_alone(digits_scan, tmp_path):
    from privaudit.audit.runner import write_run
    from privaudit.cli import main

    run = write_run(tmp_path / "run", digits_scan)
    files = {f: f.read_bytes() for f in run.iterdir()}
    assert main(["report", str(run), "--out", str(tmp_path / "shared.html"), "--redact", "omit"]) == 0
    assert {f: f.read_bytes() for f in run.iterdir()} == files
    html = (tmp_path / "shared.html").read_text()
    assert DATA_URI.findall(html) == [] and "Verdict" in html
    assert main(["report", str(run), "--out", str(tmp_path)]) == 2  # a folder is not a file


def test_summary_json_and_junit_beside_results(digits_scan, tmp_path):
    import xml.etree.ElementTree as ET

    from privaudit.audit.runner import write_run

    run = write_run(tmp_path / "run", digits_scan)
    s = json.loads((run / "summary.json").read_text())
    assert "data:image" not in (run / "summary.json").read_text()
    assert s["verdict"] == digits_scan["verdict"]["level"] and s["kind"] == "scan"
    fired = {(f["plugin"], f["text"]) for f in s["fired"]}
    assert fired == {(p["name"], r) for p in digits_scan["plugins"] for r in p["details"].get("rules", [])}
    nn = next(p for p in s["plugins"] if p["name"] == "nn")
    cf = plugin(digits_scan, "nn")["metrics"]["copy_fraction"]
    assert nn["metrics"]["copy_fraction"]["value"] == cf["value"] and nn["metrics"]["copy_fraction"]["ci"] == list(cf["ci"])
    suite = ET.parse(run / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == len(digits_scan["plugins"]) == int(suite.get("tests"))
    failing = {c.get("name").split(".", 1)[1] for c in cases if c.find("failure") is not None}
    assert failing == {p["name"] for p in digits_scan["plugins"] if p["severity"] in ("medium", "high", "critical")}
    assert failing and int(suite.get("failures")) == len(failing)  # the memorising target fails CI


def test_prose_has_no_raw_internals_and_arrows_follow_the_change(digits_scan, null_scan):
    from privaudit.reports import render_html
    from privaudit.reports.fmt import judge as _judge
    from privaudit.reports.sections.verdict import plain_why

    r = mitigation_results(digits_scan, null_scan)
    r["params"]["seed"] = None
    r["after"]["plugins"][0]["details"]["fitted"] = {"classifier_": "Pipeline(steps=[('scale', StandardScaler())])",
                                                     "sweep_": {"50": 1.0, "200": 0.91}, "timestep_": 50}
    r["matched_quality"] = {"quality_metric": "frechet_distance", "overlap": [1.0, 3.0], "verdict": "beats",
                            "beats_placebo": True, "mean_copy_advantage": 0.2, "tolerance": 0.02, "note": "fronts",
                            "points": [{"quality": q, "mitigation_copy_fraction": 0.1, "placebo_copy_fraction": 0.3}
                                       for q in range(30)]}
    html = render_html(r)
    text = re.sub(r"<pre[^>]*>.*?</pre>", "", html, flags=re.S)  # the manifest dump is JSON on purpose
    for raw in ("sweep_", "classifier_", "Pipeline(steps", "membership_auc_two_sided", "seed = ,", "DESIGN.md",
                '{"quality"'):
        assert raw not in text, raw
    assert "seed = none" in html and "timestep chosen = 50" in html and "t=200: 0.91" in html
    # "better" is the metric's declared direction; the arrow is the number's
    assert _judge("recall", "quality", 0.2, 0.6) == ("better", "better up")
    assert _judge("copy_fraction", "replication", 0.6, 0.2) == ("better", "better down")
    assert _judge("frechet_distance", "quality", 1.0, 3.0) == ("worse", "worse up")
    # a detector that reports copies it cannot attribute to members must not say "0 ... reproduced"
    scan = {"plugins": [{"name": "promptcopy", "kind": "detector", "status": "ok", "severity": "critical",
                         "metrics": {"copy_fraction": {"value": 1.0}, "copied_members": {"value": 0}},
                         "params": {"n_samples": 64}, "details": {"false_positive_rate": 0.01}}]}
    why = plain_why(scan)
    assert len(why) == 1 and "100%" in why[0] and " 0 different" not in why[0]


def test_plot_ticks_are_distinct_and_tradeoff_labels_do_not_collide():
    from privaudit.reports import svg

    ticks = svg.nice_ticks(-0.0031, -0.0009, 5)
    labels = svg.distinct_labels(ticks)
    assert len(set(labels)) == len(labels) == len(ticks)
    assert "-2e-3" not in labels or labels.count("-2e-3") == 1
    # 16 settings crowded into a corner, two families, two controls: the worst case of a real sweep
    pts = [{"x": 1.0 + 0.01 * i, "y": 0.02 + 0.001 * (i % 4), "label": f"s{i}", "number": i + 1,
            "series": "cpsample" if i % 2 else "placebo", "recommended": i == 5} for i in range(16)]
    pts += [{"x": 1.05, "y": 0.9, "label": "no mitigation", "series": None},
            {"x": 3.0, "y": 0.0, "label": "rejection sampling", "series": None}]
    out = str(svg.tradeoff(pts, xlabel="Frechet distance", ylabel="copies"))
    legend = re.search(r'<g class="legend".*?<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', out)
    lx, ly, lw, lh = map(float, legend.groups())
    frame = re.search(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" fill="none" stroke="#555"/>', out)
    assert ly + lh <= float(frame.group(2)) + 1  # the legend sits above the plot area: it covers no point
    boxes = []
    for m in re.finditer(r'<text x="([\d.]+)" y="([\d.]+)" font-size="(1[01])"[^>]*text-anchor="(start|end)"[^>]*>([^<]+)<', out):
        x, y, size, anchor, text = float(m[1]), float(m[2]), int(m[3]), m[4], m[5]
        w = 0.6 * size * len(text)
        x0 = x if anchor == "start" else x - w
        boxes.append((x0, y - size, x0 + w, y, text))
    # crowded numbers are left out rather than drawn over one another (the table lists every setting)
    assert len(boxes) >= 4 and any(b[4] == "recommended: #6" for b in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1), (a, b)


def test_redaction_refuses_a_file_it_cannot_redact_and_changes_nothing(digits_scan, tmp_path):
    from privaudit.audit.runner import write_run
    from privaudit.cli import main

    run = write_run(tmp_path / "run", digits_scan)
    pair = plugin(digits_scan, "nn")["details"]["pairs"][0]
    (run / "notes.txt").write_text(f"look: {pair['member_png']}\n")
    files = {f: f.read_bytes() for f in run.iterdir()}
    assert main(["report", str(run), "--redact", "omit"]) == 2
    assert {f: f.read_bytes() for f in run.iterdir()} == files  # all planned before anything is written
    (run / "notes.txt").unlink()
    (run / "after").mkdir()
    (run / "after" / "results.json").write_text("{not json")
    assert main(["report", str(run), "--redact", "blur"]) == 2
    assert "data:image" in (run / "results.json").read_text()  # untouched


def test_direction_comes_from_declarations_not_names():
    from privaudit.reports.fmt import METRIC_INFO, metric_info
    from privaudit.reports.fmt import judge as _judge

    # an undeclared plugin metric ending in "_fraction" is shown as changed, never judged from its name
    assert metric_info("guided_fraction")[3] is None and _judge("guided_fraction", "replication", 0.2, 0.5)[0] == "changed"
    assert _judge("copy_holdout_fpr", "replication", 0.01, 0.02)[0] == "changed"  # a reference rate
    # declared families: per-plugin copies and AUCs in a mitigation summary take the base metric's direction
    assert metric_info("nn_copy_fraction")[3] == METRIC_INFO["copy_fraction"][3] == "low"
    assert metric_info("loss_auc")[3] == "chance" and metric_info("loss_auc")[0].startswith("loss: ")
    assert _judge("mean_diversity", "replication", 0.3, 0.6) == ("better", "better up")
