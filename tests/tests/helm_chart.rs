//! The Helm chart cannot ship a configuration the binaries reject: the chart is
//! rendered (`tests/helm/chart.py render`, Helm's own library), and each pod of
//! each altdb workload is started as a real process with exactly its
//! container's command, arguments, environment (the downward API filled in as
//! the kubelet would) and mounted ConfigMap and Secret files — only addresses
//! are remapped to loopback ports and mount paths to directories of the test.
//! Then the pods' own probes must pass, and a document written through the
//! aggregator's Service is read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use altdb_tests::etcd::Etcd;
use altdb_tests::{free_port, Process};

const NAMESPACE: &str = "analytics";

/// One pod of a workload, as the test runs it.
struct Pod {
    name: String,
    ordinal: usize,
    container: Value,
    volumes: Vec<Value>,
    /// Container port name → loopback port.
    ports: HashMap<String, u16>,
    labels: Value,
}

fn render(values: &Value) -> anyhow::Result<Vec<Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("python3")
        .arg(root.join("tests/helm/chart.py"))
        .args([
            "render",
            "--decode-secrets",
            "--set-json",
            &values.to_string(),
        ])
        .output()
        .context("cannot run python3 tests/helm/chart.py (scripts/setup.sh --test)")?;
    if !output.status.success() {
        bail!(
            "the chart did not render: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("the chart renders no {kind} {name}"))
}

/// Whether `labels` carries every label of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Replaces every `from` with its `to` in one pass (a replacement is never
/// replaced again), longest first.
fn remap(text: &str, pairs: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = pairs.iter().collect();
    pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for (from, to) in &pairs {
            if rest.starts_with(from.as_str()) {
                out.push_str(to);
                rest = &rest[from.len()..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `$(NAME)` expanded from the variables defined before, as the kubelet does.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (name, set) in env {
        out = out.replace(&format!("$({name})"), set);
    }
    out
}

#[test]
fn the_chart_renders_a_config_the_binaries_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(dir.path())?;
    // The chart as a user would install it, with their own etcd.
    let docs = render(&json!({
        "etcd": {"enabled": false, "endpoints": ["http://etcd.infra.svc:2379"]},
        "leaf": {"replicas": 3, "shutdownGraceSeconds": 10},
        "tailer": {"replicas": 1},
        "aggregator": {"replicas": 1},
    }))?;

    // The pods of every altdb workload, with loopback ports.
    let mut pods: Vec<Pod> = Vec::new();
    for workload in docs
        .iter()
        .filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
    {
        let name = workload["metadata"]["name"].as_str().context("name")?;
        let replicas = workload["spec"]["replicas"].as_u64().context("replicas")?;
        let template = &workload["spec"]["template"];
        for ordinal in 0..replicas as usize {
            let container = template["spec"]["containers"][0].clone();
            let ports = container["ports"]
                .as_array()
                .context("ports")?
                .iter()
                .map(|p| (p["name"].as_str().unwrap_or("").to_string(), free_port()))
                .collect();
            pods.push(Pod {
                name: format!("{name}-{ordinal}"),
                ordinal,
                container,
                volumes: template["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                ports,
                labels: template["metadata"]["labels"].clone(),
            });
        }
    }
    assert_eq!(
        pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        [
            "altdb-aggregator-0",
            "altdb-leaf-0",
            "altdb-leaf-1",
            "altdb-leaf-2",
            "altdb-tailer-0"
        ],
        "the chart's workloads"
    );

    // Addresses inside the cluster → loopback: the user's etcd, every
    // Service (to its first pod) and every pod of a headless Service.
    let mut addresses: Vec<(String, String)> =
        vec![("etcd.infra.svc:2379".to_string(), etcd.address.clone())];
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        let name = service["metadata"]["name"].as_str().context("name")?;
        let chosen: Vec<&Pod> = pods
            .iter()
            .filter(|p| selects(&service["spec"]["selector"], &p.labels))
            .collect();
        for port in service["spec"]["ports"].as_array().context("ports")? {
            let target = port["targetPort"].as_str().context("named targetPort")?;
            for (i, pod) in chosen.iter().enumerate() {
                let local = format!("127.0.0.1:{}", pod.ports[target]);
                let pod_dns = format!("{}.{name}.{NAMESPACE}.svc:{}", pod.name, port["port"]);
                addresses.push((pod_dns, local.clone()));
                if i == 0 {
                    addresses.push((format!("{name}.{NAMESPACE}.svc:{}", port["port"]), local));
                }
            }
        }
    }

    // Start every pod.
    let mut processes: Vec<(String, Process)> = Vec::new();
    let mut secrets: HashMap<String, String> = HashMap::new();
    for pod in &pods {
        let root = dir.path().join(&pod.name);
        // Mounts: ConfigMap and Secret files, empty directories, the volume claim.
        let mut paths: Vec<(String, String)> = Vec::new();
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for mount in pod.container["volumeMounts"].as_array().context("mounts")? {
            let volume_name = mount["name"].as_str().context("mount name")?;
            let local = root.join(volume_name);
            std::fs::create_dir_all(&local)?;
            paths.push((
                mount["mountPath"]
                    .as_str()
                    .context("mountPath")?
                    .to_string(),
                local.display().to_string(),
            ));
            let volume = pod.volumes.iter().find(|v| v["name"] == volume_name);
            let data: Option<&Value> = match volume {
                Some(v) if v.get("configMap").is_some() => Some(
                    &named(
                        &docs,
                        "ConfigMap",
                        v["configMap"]["name"].as_str().unwrap_or(""),
                    )?["data"],
                ),
                Some(v) if v.get("secret").is_some() => Some(
                    &named(
                        &docs,
                        "Secret",
                        v["secret"]["secretName"].as_str().unwrap_or(""),
                    )?["stringData"],
                ),
                // emptyDir, or the claim of the StatefulSet's volumeClaimTemplates.
                _ => None,
            };
            for (file, text) in data.and_then(Value::as_object).into_iter().flatten() {
                let text = text.as_str().context("file text")?.to_string();
                if volume_name == "auth" {
                    secrets.insert(file.clone(), text.clone());
                }
                files.push((local.join(file), text));
            }
        }
        // This pod's listen addresses and the cluster's, then its mount paths.
        let mut pairs = addresses.clone();
        for port in pod.container["ports"].as_array().context("ports")? {
            let name = port["name"].as_str().unwrap_or("");
            pairs.push((
                format!("0.0.0.0:{}", port["containerPort"]),
                format!("127.0.0.1:{}", pod.ports[name]),
            ));
        }
        pairs.extend(paths);
        for (path, text) in files {
            std::fs::write(path, remap(&text, &pairs))?;
        }
        // The environment, with the downward API filled in.
        let mut env: Vec<(String, String)> = Vec::new();
        for var in pod.container["env"].as_array().context("env")? {
            let name = var["name"].as_str().context("env name")?.to_string();
            let value = if let Some(value) = var["value"].as_str() {
                remap(&expand(value, &env), &pairs)
            } else {
                match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.name.clone(),
                    Some("metadata.namespace") => NAMESPACE.to_string(),
                    Some("metadata.labels['apps.kubernetes.io/pod-index']") => {
                        pod.ordinal.to_string()
                    }
                    other => bail!("{}: env {name} from {other:?}: teach the test", pod.name),
                }
            };
            env.push((name, value));
        }
        let command: Vec<String> = pod.container["command"]
            .as_array()
            .into_iter()
            .chain(pod.container["args"].as_array())
            .flatten()
            .map(|a| remap(a.as_str().unwrap_or(""), &pairs))
            .collect();
        let binary: &'static str = match command[0].as_str() {
            "altdb-leaf" => "altdb-leaf",
            "altdb-tailer" => "altdb-tailer",
            "altdb-aggregator" => "altdb-aggregator",
            other => bail!("{} runs {other}, not an altdb binary", pod.name),
        };
        let process = Process::start(
            &pod.name,
            binary,
            command[1..].to_vec(),
            env,
            dir.path().join(format!("{}.log", pod.name)),
        )?;
        processes.push((pod.name.clone(), process));
    }

    // Each pod's own probes pass.
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    for pod in &pods {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = &pod.container[probe]["httpGet"];
            let port = pod.ports[get["port"].as_str().context("named probe port")?];
            let url = format!(
                "http://127.0.0.1:{port}{}",
                get["path"].as_str().unwrap_or("")
            );
            loop {
                let answer = http.get(&url).send();
                if answer.as_ref().is_ok_and(|a| a.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    let (_, process) = processes.iter().find(|(n, _)| n == &pod.name).unwrap();
                    bail!(
                        "{} {probe} {url} does not pass: {:?}\n{}",
                        pod.name,
                        answer.map(|a| a.text()),
                        process.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    // A user's first steps, through the aggregator's Service, with the
    // admin key the chart generated.
    let aggregator = addresses
        .iter()
        .find(|(from, _)| from == &format!("altdb-aggregator.{NAMESPACE}.svc:7700"))
        .map(|(_, to)| format!("http://{to}"))
        .context("the aggregator Service")?;
    let key = secrets
        .get("admin-key")
        .context("the generated admin key")?;
    let call = |method: reqwest::Method, path: &str, body: Value| -> anyhow::Result<Value> {
        let answer = http
            .request(method, format!("{aggregator}{path}"))
            .header("Authorization", format!("ApiKey {key}"))
            .json(&body)
            .send()?;
        let status = answer.status();
        let body: Value = answer.json()?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
        Ok(body)
    };
    call(
        reqwest::Method::POST,
        "/v1/collections",
        json!({"name": "events", "num_shards": 6, "replication": 2}),
    )?;
    let docs: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("e{i}"), "n": i}))
        .collect();
    // The collection's placement reaches the tailer through etcd.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(
            reqwest::Method::POST,
            "/v1/collections/events/docs",
            json!(docs),
        ) {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => {
                eprintln!("write not taken yet: {error}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(error) => return Err(error),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = call(
            reqwest::Method::POST,
            "/v1/query",
            json!({"sql": "SELECT COUNT(*) AS c, SUM(n) AS s FROM events"}),
        )?;
        let row = &answer["rows"][0];
        if row[0] == json!(500) {
            assert_eq!(row[1], json!(124_750));
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "documents not visible: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cluster = call(reqwest::Method::GET, "/v1/cluster", Value::Null)?;
    let members = cluster["members"].as_array().context("members")?;
    let mut ids: Vec<&str> = members.iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["altdb-leaf-0", "altdb-leaf-1", "altdb-leaf-2"],
        "leaves register under their pod names: {cluster}"
    );

    // SIGTERM, as Kubernetes stops pods: every one exits cleanly in its grace.
    for (name, mut process) in processes {
        let status = process.terminate()?;
        assert!(status.success(), "{name} exited with {status} on SIGTERM");
    }
    Ok(())
}
