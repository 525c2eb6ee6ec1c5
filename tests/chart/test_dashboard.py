"""The Grafana dashboard (charts/cream-operator/dashboards/cream.json): well-formed, every query
asks only for metrics and labels the operator exports, in valid PromQL, and, imported into a real
Grafana, every panel shows data from a real operator in the middle of a run."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from itertools import combinations
from urllib.parse import urlencode

import pytest
import yaml
from chartkit import DASHBOARD, ROOT
from cluster.operator_process import OperatorProcess
from kubernetes import client
from promql import VARIABLE, label_names, label_values_query, metric_names, substitute

from cream_operator.metrics import Metrics
from cream_operator.spec import GROUP, PLURAL, VERSION, CreamRunStatus, IterationResult
from kubeharness.grafana import Grafana
from kubeharness.prometheus import INSTALL_HINT

# What Grafana puts in for the variables when it sends a query.
VARIABLES = {"datasource": "prometheus", "namespace": ".*", "run": ".*",
             "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def queries(dash: dict) -> list[tuple[str, str, str]]:
    """(where, expr, legendFormat) of every panel target."""
    return [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"],
             t.get("legendFormat", ""))
            for p in panels(dash) for t in p.get("targets", [])]


def variable_selectors(dash: dict) -> list[tuple[str, str, str]]:
    """(where, selector, label) of every label_values() template variable."""
    out = []
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector, label = label_values_query(query)
            out.append((f"variable {var['name']}", selector, label))
    return out


def exported() -> tuple[dict[str, set[str]], set[str]]:
    """Sample name -> label names, and the family names, of the operator's registry, with one
    observation of each metric so that labelled series exist."""
    m = Metrics()
    m.observe_run("ml", "tiny", CreamRunStatus(phase="Running", results=[
        IterationResult(iteration=1, consistency_rate=0.7, pairs=3, accuracy={"gsm8k": 0.2},
                        reward_margin=0.1, reward_accuracy=0.5, judge_parse_failures=2,
                        judge_score_counts={"4.0": 3}, reward_model_mean=0.3,
                        reward_model_std=0.1)]))
    m.stage_finished("sft", 12.0)
    m.stage_failed("dpo")
    m.reconcile.observe(0.01)
    samples: dict[str, set[str]] = defaultdict(set)
    families = set()
    for family in m.registry.collect():
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name] |= set(sample.labels)
    return dict(samples), families


def test_dashboard_is_grafana_json_with_a_datasource_variable():
    dash = load()
    assert dash["uid"] == "cream-operator" and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ds, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ds and target["expr"].strip(), panel["title"]
        if "repeat" in panel:
            assert panel["repeat"] in variables
    for name in ("namespace", "run"):
        assert variables[name]["datasource"] == ds
    selectors = {where: (sel, label) for where, sel, label in variable_selectors(dash)}
    assert selectors["variable namespace"] == ("cream_consistency_rate", "namespace")
    assert selectors["variable run"] == ('cream_consistency_rate{namespace=~"$namespace"}', "run")


def test_panels_have_unique_ids_and_do_not_overlap():
    boxes = []
    ids = [p["id"] for p in panels(load())]
    assert len(ids) == len(set(ids))
    for panel in panels(load()):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24, panel["title"]
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
        assert not overlap, f"{a!r} overlaps {b!r}"


def test_every_query_uses_only_exported_metrics_and_their_labels():
    samples, _ = exported()
    checked = queries(load()) + [(w, sel, "{{" + label + "}}")
                                 for w, sel, label in variable_selectors(load())]
    for where, expr, legend in checked:
        names = metric_names(substitute(expr, VARIABLES))
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - samples.keys()
        assert not unknown, f"{where}: {sorted(unknown)} not exported by cream_operator.metrics"
        labels = set().union(*(samples[n] for n in names))
        used = label_names(substitute(expr, VARIABLES))
        used |= {part.strip() for part in legend.replace("}}", "{{").split("{{")[1::2]}
        assert used <= labels, f"{where}: labels {sorted(used - labels)} not on {sorted(names)}"


def test_every_exported_metric_is_on_the_dashboard():
    samples, families = exported()
    shown = set().union(*(metric_names(substitute(e, VARIABLES)) for _, e, _ in queries(load())))
    for family in families:
        assert any(n == family or n.startswith(family + "_") for n in shown), \
            f"{family} is exported but on no panel"


def test_required_panels_are_there():
    exprs = "\n".join(e for _, e, _ in queries(load()))
    for needle in ("cream_consistency_rate{", "cream_eval_accuracy{", "cream_dpo_pairs{",
                   "cream_reward_margin{", "cream_reward_accuracy{",
                   "cream_judge_parse_failures{", "cream_judge_scores{",
                   "cream_reward_model_mean{", "cream_reward_model_std{",
                   "histogram_quantile(0.5, sum by (le, stage) "
                   "(cream_stage_duration_seconds_bucket",
                   "sum by (stage) (cream_stage_duration_seconds_sum) / "
                   "sum by (stage) (cream_stage_duration_seconds_count)",
                   "sum by (phase) (cream_runs)", "increase(cream_stage_failures_total[",
                   "histogram_quantile(0.5, sum by (le) (rate(cream_reconcile_duration_seconds",
                   "histogram_quantile(0.99, sum by (le) (rate(cream_reconcile_duration_seconds"):
        assert needle in exprs, needle


def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not shutil.which(path):
        pytest.fail(f"promtool (Prometheus) checks the dashboard's PromQL; install: {INSTALL_HINT}")
    return path


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each expression, variables substituted, as a recording rule."""
    dash = load()
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr, VARIABLES)}
             for i, (_, expr, _) in enumerate(queries(dash))]
    rules += [{"record": f"dashboard:variable_{i}", "expr": substitute(sel, VARIABLES)}
              for i, (_, sel, _) in enumerate(variable_selectors(dash))]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout, proc.stdout


def test_name_reader_sees_metrics_not_functions_labels_or_variables():
    """The reader the tests above rely on."""
    expr = ('histogram_quantile(0.9, sum by (le, stage) (rate(x_bucket{a=~"$run", b!="y{z}"}'
            '[$__rate_interval]))) / on (stage) group_left sum without (c) (y_total offset 1h)'
            ' > bool 1e3')
    assert metric_names(substitute(expr, VARIABLES)) == {"x_bucket", "y_total"}
    assert label_names(expr) == {"a", "b", "le", "stage", "c"}


# --- in a real Grafana, against a real operator mid-run -----------------------------------------

RUN_TIMEOUT = 1200  # the tiny run's first six stages on two CPU cores, with margin


def grafana_substitute(expr: str, values: dict[str, str]) -> str:
    """What Grafana's frontend does before it sends a panel's query: the dashboard's variables
    replaced by their current values. Grafana's built-ins ($__rate_interval, $__interval,
    $__range...) are left in: its Prometheus backend interpolates those itself. A variable the
    test has no value for fails here, rather than going out as a regex that matches nothing."""

    def sub(m) -> str:
        name = m.group(0).strip("${}[]").split(":")[0]
        if name.startswith("__"):
            return m.group(0)
        if name not in values:
            raise AssertionError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    out = VARIABLE.sub(sub, expr)
    left = [v for v in VARIABLE.findall(out) if not v.strip("${}[]").startswith("__")]
    assert not left, f"variables left in {out!r}: {left}"
    return out


def frames_with_data(result: dict) -> list[dict]:
    """The frames of one /api/ds/query result that hold at least one row."""
    return [f for f in result.get("frames", [])
            if any(len(col) for col in (f.get("data") or {}).get("values", []))]


@pytest.mark.cluster
def mixed_run() -> dict:
    """The tiny example as a schedule with every step kind the dashboard shows: CREAM, then an
    iteration the model judges itself (a pattern any digit satisfies, so the tiny random model's
    judgements parse), one an external reward model ranks (the tiny classic one), then CREAM
    again, so the run is still going when iteration 3 is done."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    spec = doc["spec"]
    del spec["iterations"]
    spec["data"]["prompts"] = spec["data"]["prompts"][:1]
    spec["schedule"] = [
        {"kind": "sft"}, {"kind": "selfReward"},
        {"kind": "selfReward", "reward": "judge",
         "judge": {"pattern": "([0-9])", "maxScore": 9, "judgements": 2, "maxTokens": 16}},
        {"kind": "selfReward", "reward": "rewardModel",
         "rewardModel": {"uri": "builtin://tiny-reward", "type": "classic"}},
        {"kind": "selfReward"}]
    return doc


def test_every_panel_answers_in_grafana_against_an_operator_mid_run(
        tmp_path, kubectl, kube_env, k8s_api, namespace, s3, prometheus_factory, wait_until):
    """The chart's dashboard imported into a real Grafana (kubeharness/grafana.py), a Prometheus
    datasource scraping a real operator while a CreamRun (mixed_run) is half done: every
    panel's every query, sent through Grafana's /api/ds/query as the panel sends it, returns
    data, and the variables' label_values() queries list the run."""
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    bucket = s3.make_bucket()
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "cream-s3"}, "stringData": s3.env()})
    op = OperatorProcess(kube_env, namespace, tmp_path, f"s3://{bucket}/runs").start()
    grafana = Grafana(tmp_path / "grafana")
    custom = client.CustomObjectsApi(k8s_api)
    try:
        # JSON, not YAML: kubectl reads YAML 1.1, where the key `n` would be false.
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(mixed_run()))
        prom = prometheus_factory(targets=[f"127.0.0.1:{op.metrics_port}"])
        grafana.start()  # its first start (database migrations) overlaps the run's first stages
        grafana.add_prometheus(prom.url, uid="prometheus")
        saved = grafana.import_dashboard(load())
        assert saved["status"] == "success" and saved["uid"] == "cream-operator", saved
        dash = grafana.get(f"/api/dashboards/uid/{saved['uid']}")["dashboard"]
        assert [p["id"] for p in panels(dash)] == [p["id"] for p in panels(load())]

        def status() -> dict:
            run = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
            return run.get("status") or {}

        def iteration_three_trained() -> dict | None:
            st = status()
            assert st.get("phase") != "Failed", json.dumps(st, indent=1)[-3000:]
            done = any(r["iteration"] == 3 and r.get("rewardMargin") is not None
                       for r in st.get("results", []))
            return st if done else None

        try:
            wait_until(iteration_three_trained, RUN_TIMEOUT, "iteration 3's DPO", interval=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{op.log_text()[-4000:]}") from None
        for metric in ("cream_consistency_rate", "cream_reward_margin",
                       "cream_judge_parse_failures", "cream_reward_model_std"):
            wait_until(lambda metric=metric: prom.query(
                f'{metric}{{namespace="{namespace}",run="tiny"}}'),
                60, f"Prometheus to scrape {metric}")
        assert status()["phase"] == "Running"  # mid-run: iteration 3 is still to come

        # The variables' dropdowns, as Grafana fills them (its datasource resource API).
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            selector, label = label_values_query(var["query"]["query"])
            selector = grafana_substitute(selector, {"namespace": namespace})
            values = grafana.get("/api/datasources/uid/prometheus/resources/api/v1/label/"
                                 f"{label}/values?" + urlencode({"match[]": selector}))["data"]
            assert {"namespace": namespace, "run": "tiny"}[label] in values, (var["name"], values)

        variables = {"datasource": "prometheus", "namespace": namespace, "run": "tiny"}
        asked = 0
        for panel in panels(dash):
            if not panel.get("targets"):
                continue
            # The panel's targets as the panel sends them: its datasource, the variables filled.
            sent = [{**t, "expr": grafana_substitute(t["expr"], variables),
                     "datasource": {"type": "prometheus", "uid": grafana_substitute(
                         t["datasource"]["uid"], variables)},
                     "intervalMs": 15000, "maxDataPoints": 300} for t in panel["targets"]]
            results = grafana.query(sent)
            for target in sent:
                where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
                result = results.get(target["refId"], {})
                assert not result.get("error"), f"{where}: {result.get('error')}"
                assert frames_with_data(result), \
                    f"{where}: no data for {target['expr']!r}: {json.dumps(result)[:1500]}"
                asked += 1
        assert asked == len(queries(load()))
        assert status()["phase"] == "Running"
    finally:
        grafana.stop()
        # Deleted while the operator still runs, in case a run carries kopf's finalizer.
        kubectl("delete", "creamrun", "tiny", "-n", namespace, "--ignore-not-found",
                "--timeout=60s", check=False)
        op.stop()


def test_grafana_helpers_fill_variables_and_see_empty_answers():
    """The Grafana test's own readers: a variable without a value fails, built-ins stay for
    Grafana, and an answer without rows (what a query left with `$run` gets) is no data."""
    expr = 'rate(x{run=~"$run", ns=~"${namespace}"}[$__rate_interval])'
    assert grafana_substitute(expr, {"run": "tiny", "namespace": "ml"}) == \
        'rate(x{run=~"tiny", ns=~"ml"}[$__rate_interval])'
    with pytest.raises(AssertionError, match=r"no value for dashboard variable \$run"):
        grafana_substitute(expr, {"namespace": "ml"})
    empty = {"status": 200, "frames": [{"schema": {"fields": []}, "data": {"values": []}}]}
    rows = {"status": 200, "frames": [{"schema": {}, "data": {"values": [[1e12], [0.7]]}}]}
    assert frames_with_data(empty) == [] and frames_with_data(rows) == rows["frames"]
