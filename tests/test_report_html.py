"""hpsearch_postprocessing.py --html as a research report (issue 14; Python 3.6-3.13).

* The page's structure, read with the standard library's html.parser: the performance key is
  the first value column and highlighted, constant arguments are shown once above the tables
  (not as columns), every run folder is linked relative to the page (the links still resolve
  in a copy of the search folder), seed means and standard deviations match what this test
  computes from the runs' own summaries, hyperparameter importance shares sum to at most 1 and
  rank a dominant toy hyperparameter first, "higher/lower is better" is said, values keep
  the digits that tell neighbours apart, lists are shown compactly.
* Learning curves from a real search with --early_stopping (hpsearch_progress.jsonl).
* Headless Chromium at 1,400 px: no plot wider than the page, no SVG text outside its
  viewBox (each <text>'s getBBox() against the viewBox, measured by a script added to a test
  copy of the page; results read back from --dump-dom). Skipped without Chromium unless $CI
  is set.

Searches are real ones (hpsearch.py with toy training scripts) where the test is about what a
search leaves behind, and synthesized folders (test_postprocessing.synth_search) where it is
about exact values.
"""

import base64
import html.parser
import json
import math
import os
import random
import re
import shutil
import statistics
import urllib.parse

from conftest import SCRIPT_TOOLS, make_project, write_file
from test_early_stopping import ES, KEYWORDS as ES_KEYWORDS, TOY
from test_postprocessing import chromium, find_chromium, run_post, synth_search

# ----------------------------------------------------------------------------------------------
# Reading the page
# ----------------------------------------------------------------------------------------------

VOID = {"img", "meta", "input", "br", "hr", "link"}


class Node(object):
    """An element of the page: tag, attributes, children (elements and text)."""

    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self, skip=("title", "script", "style")):
        return "".join(c if isinstance(c, str) else c.text(skip) for c in self.children
                       if isinstance(c, str) or c.tag not in skip)

    def find_all(self, tag=None, cls=None):
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if (tag is None or child.tag == tag) and (cls is None or cls in child.classes()):
                found.append(child)
            found += child.find_all(tag, cls)
        return found

    def by_id(self, ident):
        return next(n for n in self.find_all() if n.attrs.get("id") == ident)


class TreeBuilder(html.parser.HTMLParser):
    def __init__(self):
        html.parser.HTMLParser.__init__(self, convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse_page(path):
    builder = TreeBuilder()
    with open(path, encoding="utf-8") as f:
        builder.feed(f.read())
    builder.close()
    return builder.root


class Table(object):
    """A table of the page: header texts and classes, rows of <td> nodes."""

    def __init__(self, node):
        heads = node.find_all("th")
        self.header = [th.text() for th in heads]
        self.head_classes = [th.classes() for th in heads]
        self.rows = [tr.find_all("td") for tr in node.find_all("tbody")[0].find_all("tr")]
        self.row_nodes = node.find_all("tbody")[0].find_all("tr")

    def column(self, name):
        j = self.header.index(name)
        return [row[j] for row in self.rows]


def section_table(page, name):
    return Table(page.by_id(name).find_all("table")[0])


def report(path, *flags):
    rc, out, err = run_post([path, "--html"] + list(flags))
    assert rc == 0, (out, err)
    return parse_page(os.path.join(path, "report.html")), out


def resolve(page_dir, href):
    """The file or folder a relative link of the page names."""
    assert not href.startswith(("/", "file:", "http:", "https:")), href
    return os.path.normpath(os.path.join(page_dir, urllib.parse.unquote(href)))


def number(text):
    return float(text.replace("\u2212", "-"))


# ----------------------------------------------------------------------------------------------
# A real search with seeds: acc depends strongly on lr, weakly on hidden, a little on the seed
# ----------------------------------------------------------------------------------------------

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYPgPAAED"
                       "AQAIicLsAAAAAElFTkSuQmCC")   # 1 x 1 pixel

SEEDED = SCRIPT_TOOLS + r'''
import base64
opts = options(sys.argv[1:])
out = opts["out_dir"]
os.makedirs(out)
lr, hidden, seed = float(opts["lr"]), int(opts["hidden"]), int(opts["random_seed"])
acc = 0.5 + (0.4 if lr == 0.1 else 0.0) + 0.001 * hidden + 0.01 * ((seed * 37) % 11 - 5)
with open(os.path.join(out, "performance_overview.txt"), "w") as f:
    f.write("acc %r\nloss %r\nacc_tasks %r %r %r\nfinished 1\n"
            % (acc, 1 - acc, acc, acc / 2, acc / 3))
with open(os.path.join(out, "curve 1.png"), "wb") as f:
    f.write(base64.b64decode("PNG_BASE64"))
with open(os.path.join(out, "val_predictions.svg"), "w") as f:
    f.write('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>')
if lr == 0.5 and hidden == 8 and seed == 3:
    sys.exit(1)   # its summary is there, but it failed: not in its setting's mean
'''.replace("PNG_BASE64", base64.b64encode(PNG).decode("ascii"))

SEEDED_GRID = {"lr": [0.01, 0.1, 0.5], "hidden": [8, 32], "random_seed": [1, 2, 3],
               "const": ["same"]}
SEEDED_KEYWORDS = ["acc", "loss", "acc_tasks", "finished"]


def seeded_search(tmp_path):
    project = make_project(tmp_path, script_body=SEEDED, grid=SEEDED_GRID,
                           summary_keywords=SEEDED_KEYWORDS, performance_key="acc")
    rc, out, err = project.hpsearch("--deterministic_search", "--local_jobs=2", timeout=120)
    assert rc == 1, (out, err)   # one run failed
    return project.search()


def expected_settings(search):
    """``{(lr, hidden): (mean, std, n)}`` of acc over each setting's finished runs, from the
    runs' own summary files and the journal's states (computed here, not by the script)."""
    states = search.final_states()
    accs = {}
    for run in search.runs():
        if states[run["name"]] != "finished":
            continue
        with open(os.path.join(search.run_dir(run["name"]), "performance_overview.txt")) as f:
            acc = float(f.read().split("acc ", 1)[1].split()[0])
        accs.setdefault((run["args"]["lr"], run["args"]["hidden"]), []).append(acc)
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
            for k, v in accs.items()}


def test_seed_averaged_report_structure_links_and_statistics(tmp_path):
    search = seeded_search(tmp_path)
    page, out = report(search.path, "--top", "2")

    # The key, its direction, the seed averaging and the constant argument, above the tables.
    head = page.find_all("body")[0].text()
    assert "Performance key: acc, higher is better." in head
    assert "Runs that differ only in random_seed are averaged: 6 settings" in head
    constant = page.find_all("p", "constant")[0].text()
    assert "const=same" in constant

    # The settings table: performance key first and highlighted, no constant or seed column,
    # best mean first, mean and std as computed here.
    settings = section_table(page, "settings")
    assert settings.header[:2] == ["#", "acc"] and "key" in settings.head_classes[1]
    assert all("key" in td.classes() for td in settings.column("acc"))
    assert "const" not in settings.header and "random_seed" not in settings.header
    assert settings.header[3:5] == ["lr", "hidden"]
    expected = expected_settings(search)
    assert len(settings.rows) == len(expected) == 6
    means = []
    for row, cell in zip(settings.rows, settings.column("acc")):
        key = (number(row[settings.header.index("lr")].text()),
               int(row[settings.header.index("hidden")].text()))
        mean, std, n = expected[key]
        m = re.match(r"^(\S+) \u00b1 (\S+) \((\d+)\)$", cell.text())
        assert m, cell.text()
        assert math.isclose(float(cell.attrs["data-v"]), mean, rel_tol=1e-12)
        assert math.isclose(number(m.group(1)), mean, rel_tol=1e-4)
        assert math.isclose(number(m.group(2)), std, rel_tol=0.05), (m.group(2), std)
        assert int(m.group(3)) == n
        means.append(mean)
    assert means == sorted(means, reverse=True)
    assert [n for _, _, n in expected.values()].count(2) == 1   # the failed run left out

    # The terminal's best table: settings by mean too.
    best = out[out.index("best 2 settings by the mean of acc over --random_seed"):]
    top = max(expected.items(), key=lambda kv: kv[1][0])
    first = re.split(r"\s{2,}", best.splitlines()[3].strip())
    assert first[:3] == ["1", "%.4g" % top[0][0], str(top[0][1])], first
    assert first[3].startswith("%.4g +- " % top[1][0]), first

    # Plots: a mean point per setting in each plot (lr, hidden), a faint point per run.
    plots = page.by_id("plots").find_all("svg")
    assert len(plots) == 2
    for svg in plots:
        assert len(svg.find_all("circle", "pm")) == 6
        assert len(svg.find_all("circle", "pf")) == 18
        assert svg.attrs["width"] == "100%" and svg.attrs["viewbox"].startswith("0 0 ")

    # Every run: a row in the results table, its folder linked relative to the page; the key
    # first and highlighted there too; a list value shown compactly with the whole as title.
    runs = section_table(page, "runs")
    assert runs.header[:3] == ["#", "run", "acc"] and "key" in runs.head_classes[2]
    assert "const" not in runs.header and "random_seed" in runs.header
    names = [r["name"] for r in search.runs()]
    links = {td.text(): td.find_all("a")[0].attrs["href"] for td in runs.column("run")}
    assert sorted(links) == sorted(names)
    for name, href in links.items():
        assert resolve(search.path, href) == search.run_dir(name)
        assert os.path.isdir(resolve(search.path, href))
    for cell in runs.column("acc_tasks"):
        assert re.match(r"^\[0\.\d+, 0\.\d+, \u2026\]$", cell.text()), cell.text()
        assert len(cell.attrs["title"].split(",")) == 3
    assert all(td.text().endswith(" s") for td in runs.column("duration"))
    states = [tr.attrs["class"] for tr in runs.row_nodes]
    assert states.count("failed") == 1 and states.count("finished") == 17

    # The script's images: thumbnails (relative src, lazy) for the best 2 runs, links for all.
    for i, cell in enumerate(runs.column("files")):
        hrefs = [a.attrs["href"] for a in cell.find_all("a")]
        assert sorted(os.path.basename(resolve(search.path, h)) for h in hrefs) == \
            ["curve 1.png", "val_predictions.svg"]
        assert all(os.path.isfile(resolve(search.path, h)) for h in hrefs)
        thumbs = cell.find_all("img")
        assert len(thumbs) == (2 if i < 2 else 0)
        for img in thumbs:
            assert img.attrs["loading"] == "lazy" and "thumb" in img.classes()
            assert os.path.isfile(resolve(search.path, img.attrs["src"]))

    # The settings table links each seed's run; the mean points link to the settings' rows.
    seed_links = [a.attrs["href"] for td in settings.column("runs (by random_seed)")
                  for a in td.find_all("a")]
    assert sorted(resolve(search.path, h) for h in seed_links) == \
        sorted(search.run_dir(n) for n in names)
    rows = {tr.attrs["id"] for tr in settings.row_nodes}
    point_links = {a.attrs["href"] for svg in plots for a in svg.find_all("a")}
    assert {h[1:] for h in point_links if h.startswith("#")} == rows
    assert {resolve(search.path, h) for h in point_links if not h.startswith("#")} == \
        {search.run_dir(n) for n in names}

    # No summary histories (no --early_stopping): the section says so in one line.
    curves = page.by_id("curves")
    assert not curves.find_all("svg")
    assert "No learning curves" in curves.text()

    # A copy of the search folder: the same page's links resolve there (relative links).
    copy = os.path.join(str(tmp_path), "elsewhere", "copied_search")
    shutil.copytree(search.path, copy)
    copied = parse_page(os.path.join(copy, "report.html"))
    hrefs = [a.attrs["href"] for a in copied.find_all("a") if not
             a.attrs["href"].startswith("#")]
    assert len(hrefs) > 18
    for href in hrefs:
        assert resolve(copy, href).startswith(copy + os.sep)
        assert os.path.exists(resolve(copy, href)), href


def test_no_seed_average_ranks_single_runs(tmp_path):
    runs = [{"args": {"lr": lr, "random_seed": seed},
             "summary": "acc %r\nloss 1.0\nfinished 1\n" % (lr + seed / 100.0)}
            for lr in (0.1, 0.2) for seed in (1, 2)]
    path = synth_search(tmp_path, runs)
    page, out = report(path, "--no_seed_average")
    assert "best 10 runs by acc" in out
    assert page.find_all("section") and not [s for s in page.find_all("section")
                                             if s.attrs["id"] == "settings"]
    plots = page.by_id("plots").find_all("svg")
    assert len(plots) == 2   # lr and random_seed: the seed is a hyperparameter here
    assert all(len(svg.find_all("circle", "pt")) == 4 for svg in plots)
    assert not page.find_all("circle", "pm")


def test_a_search_still_running_shows_its_running_runs(tmp_path):
    # Seeds vary, one run has finished, the others are still going (partial summaries).
    runs = [{"args": {"lr": lr, "random_seed": seed}, "summary": "acc 0.%d\n" % seed,
             "journal": [("running", None)]} for lr in (0.1, 0.2) for seed in (1, 2)]
    runs[0].update(summary="acc 0.5\nloss 1.0\nfinished 1\n", journal=[("finished", 0)])
    path = synth_search(tmp_path, runs)
    page, out = report(path)
    states = [tr.attrs["class"] for tr in section_table(page, "runs").row_nodes]
    assert sorted(states) == ["finished", "running", "running", "running"]
    assert [td.text() for td in section_table(page, "runs").column("state")].count(
        "running") == 3
    means = [td.text() for td in section_table(page, "settings").column("acc")]
    assert means == ["0.5 (1)", ""]
    # Nothing finished yet: the page is still written, the key column still there.
    for run in runs:
        run.update(summary="acc 0.1\n", journal=[("running", None)])
    path = synth_search(tmp_path, runs, name="search_none_finished")
    page, out = report(path)
    assert "no setting has a finished run with a number for 'acc' yet" in out
    assert section_table(page, "settings").header[:2] == ["#", "acc"]


# ----------------------------------------------------------------------------------------------
# Which hyperparameters matter
# ----------------------------------------------------------------------------------------------


def importance_bars(page):
    """``[(hyperparameter, share)]`` as the importance chart shows them, in its order."""
    chart = page.by_id("importance")
    labels = chart.find_all("text")[0::2]   # each bar: its label, its bar, its percentage
    names = [(t.find_all("title")[0] if t.find_all("title") else t).text(skip=())
             for t in labels]   # a label cut to fit has its whole name as title
    shares = [float(bar.attrs["data-share"]) for bar in chart.find_all("rect")]
    percents = [float(t.text().rstrip(" %")) for t in chart.find_all("text")[1::2]]
    assert [round(100 * share, 1) for share in shares] == percents
    return list(zip(names, shares))


def main_effect(values, ys):
    """Share of the variance of ys explained by the groups of ``values`` (computed here)."""
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    groups = {}
    for v, y in zip(values, ys):
        groups.setdefault(v, []).append(y)
    return sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values()) / total


def test_importance_ranks_the_dominant_hyperparameter_first(tmp_path):
    # loss = 1.0 * depth effect + 0.1 * width effect + noise; 'note' has no effect; lower is
    # better here.
    specs, losses = [], []
    for depth in (1, 2, 3):
        for width in (8, 16):
            for note in ("a", "b"):
                loss = 1.0 * depth + 0.1 * (width == 16) + 0.01 * ((depth * 7 + width) % 3)
                losses.append(loss)
                specs.append({"args": {"depth": depth, "width": width, "note": note,
                                       "const": 1},
                              "summary": "acc 0.5\nloss %r\nfinished 1\n" % loss})
    path = synth_search(tmp_path, specs, perf_key="loss", sort_asc=True)
    page, _ = report(path)
    assert "Performance key: loss, lower is better." in page.find_all("body")[0].text()
    bars = importance_bars(page)
    assert [name for name, _ in bars[:3]] == ["depth", "width", "note"]
    assert bars[3][0].startswith("rest")
    assert sum(share for name, share in bars[:3]) <= 1.0 + 1e-9
    assert math.isclose(sum(share for _, share in bars), 1.0, rel_tol=1e-9)
    for name, share in bars[:3]:   # a full grid: main effects are orthogonal, none scaled
        expected = main_effect([s["args"][name] for s in specs], losses)
        assert math.isclose(share, expected, rel_tol=1e-9, abs_tol=1e-12), (name, share)
    assert bars[0][1] > 0.9 and bars[2][1] < 0.01


def drawn_search(tmp_path, name, with_copy):
    """80 runs; 'lr' drawn (80 distinct values) decides acc, 'noise' drawn too (independent
    of lr) and without effect, 'other' has two values and no effect; ``with_copy``: 'copy' is
    lr again."""
    noise = list(range(80))
    random.Random(5).shuffle(noise)
    specs = []
    for k in range(80):
        lr = 0.001 * (1 + (k * 17) % 80)
        args = {"lr": lr, "noise": 0.37 * noise[k] + 1, "other": k % 2}
        if with_copy:
            args["copy"] = lr
        specs.append({"args": args, "summary": "acc %r\nloss 1.0\nfinished 1\n"
                      % (0.2 + 10 * lr + 0.001 * (k % 3))})
    return synth_search(tmp_path, specs, name=name)


def test_importance_of_drawn_numbers_is_binned_and_shares_never_exceed_1(tmp_path):
    # Drawn numbers go into at most 10 quantile bins: a drawn hyperparameter without effect
    # explains little (one group per run would explain everything).
    page, _ = report(drawn_search(tmp_path, "search_drawn", with_copy=False))
    bars = dict(importance_bars(page))
    assert max(bars, key=bars.get) == "lr" and bars["lr"] > 0.8
    assert bars["noise"] < 0.2 and bars["other"] < 0.05
    assert sum(share for name, share in bars.items() if not name.startswith("rest")) <= 1
    assert "quantile bin" in page.by_id("importance").text()
    # 'copy' is lr again: the two main effects overlap, raw shares sum to about 2; they are
    # scaled to sum to 1.
    page, _ = report(drawn_search(tmp_path, "search_copy", with_copy=True))
    bars = importance_bars(page)
    assert {name for name, _ in bars[:2]} == {"lr", "copy"}
    assert 0.4 < bars[1][1] <= bars[0][1] < 0.5
    assert sum(share for _, share in bars[:-1]) <= 1.0 + 1e-9


# ----------------------------------------------------------------------------------------------
# Numbers that differ only late, lists
# ----------------------------------------------------------------------------------------------


def test_neighbouring_values_stay_apart_and_lists_are_compact(tmp_path):
    values = [377.147614, 377.147619, 377.2, 12.5]
    specs = [{"args": {"k": k, "tasks": [0.1 * k, 0.2, 0.3, 0.4]},
              "summary": "acc %r\nloss 1.0\nfinished 1\n" % v} for k, v in enumerate(values)]
    path = synth_search(tmp_path, specs)
    page, _ = report(path)
    runs = section_table(page, "runs")
    shown = [td.text() for td in runs.column("acc")]
    assert len(set(shown)) == 4
    for text, value in zip(shown, sorted(values, reverse=True)):
        assert math.isclose(float(text), value, rel_tol=2e-8), (text, value)
    assert len(shown[-1]) <= 6   # 12.5 with no more digits than it needs
    for td in runs.column("tasks"):
        assert td.text().endswith(", 0.2, \u2026]"), td.text()
        assert td.attrs["title"].count(",") == 3


# ----------------------------------------------------------------------------------------------
# Learning curves: a real search with early stopping
# ----------------------------------------------------------------------------------------------


def test_learning_curves_of_an_early_stopping_search(tmp_path):
    project = make_project(tmp_path, script_body=TOY,
                           grid={"q": [1.0, 0.3, 0.25, 0.2, 0.35, 0.4], "epochs": [9],
                                 "pause": [0.05]},
                           summary_keywords=ES_KEYWORDS, performance_key="val_acc")
    os.makedirs(os.path.join(project.path, "ledger"))
    rc, out, err = project.hpsearch("--local_jobs=3", "--deterministic_search",
                                    "--es_max_step=9", *ES, timeout=120)
    assert rc == 0, (out, err)
    search = project.search()
    states = search.final_states()
    with_history = [n for n in states
                    if os.path.isfile(search.file(n, "hpsearch_progress.jsonl"))]
    assert len(with_history) == 6
    page, _ = report(search.path, "--top", "3")
    curves = page.by_id("curves")
    svg = curves.find_all("svg")[0]
    best = svg.find_all("polyline", "cb")
    assert len(best) == 3 and len(svg.find_all("polyline", "cf")) == 3
    q_of = {r["name"]: r["args"]["q"] for r in search.runs()}
    assert q_of[best[-1].find_all("title")[0].text(skip=())] == 1.0   # drawn last, on top
    stopped = [n for n, st in states.items() if st == "stopped"]
    assert stopped   # ASHA stops some of the weak runs
    assert len(svg.find_all("path", "stop")) == len(stopped)
    assert "stopped by early stopping" in curves.text()
    assert "higher is better" in curves.text() and "epoch" in curves.text()
    for a in curves.find_all("a"):
        assert os.path.isdir(resolve(search.path, a.attrs["href"]))


# ----------------------------------------------------------------------------------------------
# Headless Chromium at 1,400 px
# ----------------------------------------------------------------------------------------------

# Added to a copy of the page: measures, then writes what it found into the DOM.
MEASURE = """
<script>
window.addEventListener("load", function () {
  var out = ["page " + document.documentElement.scrollWidth + " " + window.innerWidth];
  var svgs = document.querySelectorAll("svg");
  for (var i = 0; i < svgs.length; i++) {
    var svg = svgs[i], vb = svg.viewBox.baseVal, r = svg.getBoundingClientRect();
    var box = svg.parentNode.getBoundingClientRect();
    out.push("svg " + i + " " + r.left + " " + r.right + " " + box.left + " " + box.right);
    var texts = svg.querySelectorAll("text");
    for (var j = 0; j < texts.length; j++) {
      var b = texts[j].getBBox();
      if (b.width === 0) { out.push("empty " + i); }
      if (b.x < vb.x - 0.5 || b.y < vb.y - 0.5 || b.x + b.width > vb.x + vb.width + 0.5 ||
          b.y + b.height > vb.y + vb.height + 0.5) {
        out.push("clipped " + i + " " + [b.x, b.y, b.width, b.height].join(",") + " " +
                 JSON.stringify(texts[j].textContent));
      }
    }
  }
  var pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = out.join("\\n");
  document.body.appendChild(pre);
});
</script>
"""

LONG_KEY = "aa_mse_final_inferred_mean_during_training_on_all_tasks_seen_so_far"


def wide_search(tmp_path):
    """Long names, text and list values, many hyperparameters (a wide parallel plot), long
    tick labels, seeds."""
    specs = []
    for k in range(24):
        args = {"learning_rate_of_the_hypernetwork": [1e-5, 3e-4, 0.1][k % 3],
                "optimizer_with_a_long_name": ["adam_with_warmup", "sgd_nesterov"][k // 3 % 2],
                "per_task_regularisation": [[0.1, 0.2, 0.3, 0.4], [1.5, 2.5, 3.5]][k // 6 % 2],
                "hidden": [8, 16][k // 12], "beta": -1234.5678 * (k % 3), "flag": k % 2 == 0,
                "random_seed": k % 2 + 1, "const_a": "x", "const_b": 7}
        perf = -0.000123456 * (1 + k / 7.0)   # long tick labels
        specs.append({"args": args, "summary": "%s %r\nloss -0.000123456\nfinished 1\n" % (
            LONG_KEY, perf)})
    specs[3]["journal"] = [("failed", 1)]
    specs[4]["journal"] = [("running", None)]
    specs[5]["journal"] = [("stopped", -15)]
    path = synth_search(tmp_path, specs, keywords=(LONG_KEY, "loss", "finished"),
                        perf_key=LONG_KEY)
    # Summary histories as hpsearch keeps them with --early_stopping (learning curves).
    record_path = os.path.join(path, "search_record.json")
    with open(record_path) as f:
        record = json.load(f)
    record["early_stopping"] = {"early_stopping": "asha", "es_step_key": "training_iteration"}
    write_file(record_path, json.dumps(record))
    for k, run in enumerate(record["runs"]):
        lines = [json.dumps({"time": 1.0 + step, "step": step, "values": {
            LONG_KEY: -0.000123456 * (1 + k / 7.0) * step / 9.0, "training_iteration": step}})
            for step in range(1, 4 if k == 5 else 10)]
        write_file(os.path.join(path, run["name"], "hpsearch_progress.jsonl"),
                   "\n".join(lines) + "\n")
    return path


def measured(binary, page_path):
    """What MEASURE found in a copy of the page rendered at 1,400 px."""
    with open(page_path, encoding="utf-8") as f:
        text = f.read()
    probe = os.path.join(os.path.dirname(page_path), "probe.html")
    write_file(probe, text.replace("</body>", MEASURE + "</body>"))
    rc, dom, err = chromium(binary, "file://" + probe, "--window-size=1400,1000",
                            "--virtual-time-budget=5000", "--dump-dom")
    assert rc == 0, err[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return found.group(1).splitlines()


def test_report_fits_1400_px_with_no_text_cut_in_chromium(tmp_path):
    binary = find_chromium()
    path = wide_search(tmp_path)
    page_path = os.path.join(path, "report.html")
    for flags in ([], ["--no_seed_average"]):   # means; single runs, the seed an axis
        report(path, *flags)
        lines = measured(binary, page_path)
        _, scroll, inner = lines[0].split()
        assert int(inner) == 1400 and int(scroll) <= 1400, lines[0]
        svgs = [line.split() for line in lines if line.startswith("svg ")]
        assert len(svgs) >= 8, lines
        for _, i, left, right, box_left, box_right in svgs:
            assert float(right) <= float(box_right) + 0.5 and float(right) <= 1400, (i, svgs)
            assert float(left) >= float(box_left) - 0.5
        problems = [line for line in lines if line.startswith(("clipped", "empty"))]
        assert not problems, problems
        # Only text may be cut short to fit (with its whole self as title), never a number.
        for text in parse_page(page_path).find_all("text"):
            if text.text().endswith("\u2026"):
                whole = text.find_all("title")[0].text(skip=())
                assert not re.match(r"^-?[\d.e+-]+$", whole), whole
