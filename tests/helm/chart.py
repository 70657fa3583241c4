#!/usr/bin/env python3
"""Checks and renders the Helm chart in helm/altdb without a helm binary.

    python3 tests/helm/chart.py check
        lints the chart (Helm v4's library, through helm-python-sdk), renders it
        with the default values and with every file in helm/altdb/examples/, and
        validates each rendered manifest against the Kubernetes schemas
        (kubernetes-validate, offline, strict: unknown fields are errors).
    python3 tests/helm/chart.py render [--values FILE].. [--set-json JSON] [--decode-secrets]
        prints the rendered manifests as one JSON list (the end-to-end test
        tests/tests/helm_chart.rs starts a cluster from them).
"""

import argparse
import json
import pathlib
import sys

import helm_python
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "altdb"
RELEASE = "altdb"
NAMESPACE = "analytics"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and a current one.
KUBE_VERSIONS = ["1.30.0", "1.35.0"]


def deep_merge(into, layer):
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def render(values):
    chart = helm_python.Chart.load(str(CHART))
    try:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


def lint(values):
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [{"error": e} for e in report.get("errors", []) or []]
    return problems


def validate(docs):
    import kubernetes_validate

    failures = []
    for doc in docs:
        kind = doc.get("kind")
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com"):
            continue  # a CRD: not in the Kubernetes schemas
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{kind} {doc['metadata'].get('name')} (Kubernetes {version}): "
                                f"{error.message} at {'/'.join(map(str, error.path))}")
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.append(f"{kind}: no schema for Kubernetes {version}: {error}")
    return failures


def value_sets():
    """(name, values) of every configuration CI checks."""
    sets = [("defaults", {})]
    for example in sorted((CHART / "examples").glob("*.yaml")):
        sets.append((f"examples/{example.name}", yaml.safe_load(example.read_text()) or {}))
    # Every optional part switched on at once.
    sets.append(("everything on", {
        "networkPolicy": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "tls": {"secretName": "altdb-tls"},
        "auth": {"existingSecret": "my-altdb-auth"},
        "etcd": {"replicas": 3},
        "leaf": {"antiAffinity": "hard"},
    }))
    return sets


def check():
    failed = False
    for name, values in value_sets():
        problems = lint(values)
        docs = render(values)
        failures = validate(docs)
        kinds = sorted({d["kind"] for d in docs})
        print(f"{name}: {len(docs)} manifests ({', '.join(kinds)}); "
              f"lint problems {len(problems)}, schema failures {len(failures)}")
        for problem in problems:
            print(f"  lint: {problem}")
        for failure in failures:
            print(f"  schema: {failure}")
        failed |= bool(problems or failures)
    # Values a user may get wrong are refused with a message saying what to fix.
    for values, expected in [
        ({"etcd": {"enabled": False}}, "set etcd.endpoints"),
        ({"auth": {"clusterSecret": "short"}}, "at least 32 characters"),
        ({"etcd": {"replicas": 2}}, "replicas"),
        ({"leaf": {"replicas": "three"}}, "replicas"),
        ({"leaf": {"replica": 3}}, "replica"),
    ]:
        try:
            render(values)
            print(f"values {values} rendered; expected an error naming '{expected}'")
            failed = True
        except helm_python.HelmError as error:
            if expected not in str(error):
                print(f"values {values}: error {error} does not say '{expected}'")
                failed = True
    if failed:
        sys.exit(1)
    print("chart OK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    render_cmd = sub.add_parser("render")
    render_cmd.add_argument("--values", action="append", default=[])
    render_cmd.add_argument("--set-json", action="append", default=[])
    render_cmd.add_argument("--decode-secrets", action="store_true",
                            help="give Secrets' data as stringData (for tests)")
    args = parser.parse_args()
    if args.command == "check":
        check()
    else:
        values = {}
        for path in args.values:
            deep_merge(values, yaml.safe_load(pathlib.Path(path).read_text()) or {})
        for text in args.set_json:
            deep_merge(values, json.loads(text))
        docs = render(values)
        if args.decode_secrets:
            import base64
            for doc in docs:
                if doc["kind"] == "Secret":
                    doc["stringData"] = {k: base64.b64decode(v).decode()
                                         for k, v in doc.pop("data", {}).items()}
        json.dump(docs, sys.stdout)


if __name__ == "__main__":
    main()
