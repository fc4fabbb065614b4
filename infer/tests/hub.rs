//! Models by Hub name (`--model owner/name`) against a local server that answers as the Hugging
//! Face Hub does: `HEAD`/`GET /{owner}/{name}/resolve/{revision}/{file}` with `X-Repo-Commit` and
//! `ETag`; for LFS files (weights) a 302 to another host name (`localhost` for `127.0.0.1`) with
//! `X-Linked-Etag` (the sha256) and `X-Linked-Size`, range requests there; 404 with
//! `X-Error-Code`. The repositories are the fixtures of `scripts/make_hub_fixtures.py`: tiny
//! models written by timm's `save_for_hf` and transformers' `save_pretrained` under real names,
//! with the references' outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

mod common;
use common::{flat, max_abs_diff, read_npy};

const VIT: &str = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k";
const TNT: &str = "timm/tnt_s_patch16_224.in1k";
const DETR: &str = "facebook/detr-resnet-50";

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hub").join(path)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// How the storage host misbehaves on its next answer.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    /// One byte of the content changed.
    Corrupt,
    /// The connection closes after half of the content.
    Truncate,
}

#[derive(Debug)]
struct Logged {
    method: String,
    url: String,
    host: String,
    authorized: bool,
    range: Option<String>,
}

struct MockHub {
    port: u16,
    server: Arc<tiny_http::Server>,
    log: Arc<Mutex<Vec<Logged>>>,
    fault: Arc<Mutex<Fault>>,
}

impl MockHub {
    /// Serves the repositories under each root (`{root}/{owner}/{name}/{file}`).
    fn start(roots: Vec<PathBuf>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let fault = Arc::new(Mutex::new(Fault::None));
        let (s, l, f) = (server.clone(), log.clone(), fault.clone());
        std::thread::spawn(move || {
            for request in s.incoming_requests() {
                answer(request, &roots, port, &l, &f);
            }
        });
        Self { port, server, log, fault }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().map(|l| format!("{} {}", l.method, l.url)).collect()
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// The commit every repository is at: a fixed hash of its name.
fn commit_of(repo: &str) -> String {
    sha256(repo.as_bytes())[..40].to_string()
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

fn answer(request: tiny_http::Request, roots: &[PathBuf], port: u16, log: &Mutex<Vec<Logged>>, fault: &Mutex<Fault>) {
    let get = |name: &'static str| {
        request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().to_string())
    };
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let host = get("Host").unwrap_or_default();
    let range = get("Range");
    log.lock().unwrap().push(Logged {
        method: method.clone(),
        url: url.clone(),
        host: host.clone(),
        authorized: get("Authorization").is_some(),
        range: range.clone(),
    });
    let not_found = |code: &str| {
        tiny_http::Response::empty(404)
            .with_header(header("X-Error-Code", code))
            .with_header(header("X-Error-Message", &format!("{code} (mock hub)")))
    };
    // The storage host of large files: content by sha256, with range requests.
    if let Some(sha) = url.strip_prefix("/lfs/") {
        let file = roots
            .iter()
            .flat_map(|r| walk(r))
            .find(|p| sha256(&std::fs::read(p).unwrap()) == sha)
            .expect("a served blob");
        let mut bytes = std::fs::read(file).unwrap();
        let start: usize =
            range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap_or(0);
        let full = bytes.len();
        let current = std::mem::replace(&mut *fault.lock().unwrap(), Fault::None);
        if current == Fault::Corrupt {
            bytes[full / 2] ^= 0xff;
        }
        let body = bytes[start..].to_vec();
        let declared = body.len();
        let sent = if current == Fault::Truncate { body[..declared / 2].to_vec() } else { body };
        let status = if start > 0 { 206 } else { 200 };
        let response = tiny_http::Response::new(
            tiny_http::StatusCode(status),
            vec![header("Content-Range", &format!("bytes {start}-{}/{full}", full - 1))],
            std::io::Cursor::new(sent),
            Some(declared),
            None,
        );
        let _ = request.respond(response);
        return;
    }
    // /{owner}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = url.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        let _ = request.respond(tiny_http::Response::empty(400));
        return;
    };
    let repo = format!("{owner}/{name}");
    let Some(dir) = roots.iter().map(|r| r.join(owner).join(name)).find(|d| d.is_dir()) else {
        let _ = request.respond(not_found("RepoNotFound"));
        return;
    };
    let commit = commit_of(&repo);
    if revision != "main" && revision != commit {
        let _ = request.respond(not_found("RevisionNotFound"));
        return;
    }
    let Ok(bytes) = std::fs::read(dir.join(file)) else {
        let _ = request.respond(not_found("EntryNotFound"));
        return;
    };
    let sha = sha256(&bytes);
    let lfs = file.ends_with(".safetensors") || file.ends_with(".bin");
    if lfs {
        // Large files live on another host; the Hub's answer describes them.
        let response = tiny_http::Response::empty(302)
            .with_header(header("Location", &format!("http://localhost:{port}/lfs/{sha}")))
            .with_header(header("X-Repo-Commit", &commit))
            .with_header(header("X-Linked-Etag", &format!("\"{sha}\"")))
            .with_header(header("X-Linked-Size", &bytes.len().to_string()))
            .with_header(header("ETag", "\"0123456789abcdef0123456789abcdef01234567\""));
        let _ = request.respond(response);
        return;
    }
    // A small file: its git object id as the etag (any id will do here).
    let etag = format!("\"{}\"", &sha[..40]);
    let length = bytes.len();
    let body = if method == "HEAD" { Vec::new() } else { bytes };
    let response = tiny_http::Response::new(
        tiny_http::StatusCode(200),
        vec![header("X-Repo-Commit", &commit), header("ETag", &etag)],
        std::io::Cursor::new(body),
        Some(length),
        None,
    );
    let _ = request.respond(response);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// `zoo` with the Hub at `endpoint` and its cache under `home`.
fn zoo(args: &[&str], endpoint: &str, home: &Path, extra: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .env_remove("BURN_DEVICE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .envs(extra.iter().copied())
        .output()
        .expect("zoo runs")
}

fn ok(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "zoo failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn failed(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected an error, got: {stderr}");
    assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

fn reference(repo: &str, name: &str) -> PathBuf {
    data(&format!("references/{}/{name}", repo.replace('/', "--")))
}

fn classify_json(repo: &str, endpoint: &str, home: &Path, extra: &[(&str, &str)]) -> std::process::Output {
    let input = reference(repo, "input.npy");
    zoo(&["classify", "--model", repo, "--input-npy", input.to_str().unwrap(), "--json"], endpoint, home, extra)
}

/// Every file of the cache's repository folder, relative to it, with what a link points at.
fn cache_listing(repo_dir: &Path) -> BTreeMap<String, Option<PathBuf>> {
    walk(repo_dir)
        .into_iter()
        .map(|p| (p.strip_prefix(repo_dir).unwrap().display().to_string(), std::fs::read_link(&p).ok()))
        .collect()
}

#[test]
fn timm_models_by_name_equal_timm_and_live_in_the_hub_cache() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    for repo in [VIT, TNT] {
        let out = ok(&classify_json(repo, &hub.endpoint(), home.path(), &[]));
        let expected = read_npy(&reference(repo, "logits.npy"));
        let diff = max_abs_diff(&flat(&out["logits"]), &expected);
        assert!(diff < 1e-4, "{repo}: logits {diff} off timm's");
        // ImageNet-1k's names, as timm describes them.
        let top = &out["top_k"][0][0];
        let class = top["class"].as_u64().unwrap() as usize;
        let imagenet: Vec<&str> = zoo_infer::pretrained::IMAGENET_1K_LABELS.lines().collect();
        assert_eq!(top["label"].as_str().unwrap(), imagenet[class]);

        // huggingface_hub's layout: refs/main -> commit, snapshot links into blobs/.
        let repo_dir = home.path().join("hub").join(format!("models--{}", repo.replace('/', "--")));
        let commit = commit_of(repo);
        assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), commit);
        let listing = cache_listing(&repo_dir);
        let weights_sha = sha256(&std::fs::read(data(&format!("repos/{repo}/model.safetensors"))).unwrap());
        assert_eq!(
            listing[&format!("snapshots/{commit}/model.safetensors")].as_deref(),
            Some(Path::new(&format!("../../blobs/{weights_sha}")))
        );
        assert!(listing.contains_key(&format!("blobs/{weights_sha}")), "{listing:?}");
        assert!(listing.contains_key(&format!("snapshots/{commit}/config.json")));
        assert!(!listing.keys().any(|k| k.ends_with(".incomplete")), "{listing:?}");
    }
    // The weights came from the storage host, without the (absent) token.
    let log = hub.log.lock().unwrap();
    assert!(log.iter().any(|l| l.url.starts_with("/lfs/") && l.host.starts_with("localhost")), "{log:?}");
    drop(log);

    // A second run asks the Hub only for metadata (HEAD), nothing is downloaded again.
    let before = hub.requests().len();
    ok(&classify_json(VIT, &hub.endpoint(), home.path(), &[]));
    let again = &hub.requests()[before..];
    assert!(again.iter().all(|r| r.starts_with("HEAD ")), "{again:?}");

    // Network gone: the cache serves, with and without HF_HUB_OFFLINE.
    let first = ok(&classify_json(VIT, &hub.endpoint(), home.path(), &[]));
    let dead = "http://127.0.0.1:9";
    for extra in [&[][..], &[("HF_HUB_OFFLINE", "1")][..]] {
        let out = ok(&classify_json(VIT, dead, home.path(), extra));
        assert_eq!(out["logits"], first["logits"], "{extra:?}");
    }
}

#[test]
fn detr_by_name_equals_transformers_and_names_coco_categories() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    let input = reference(DETR, "input.npy");
    let out = ok(&zoo(
        &["detect", "--model", DETR, "--input-npy", input.to_str().unwrap(), "--threshold", "0", "--json"],
        &hub.endpoint(),
        home.path(),
        &[],
    ));
    for (key, file) in [("pred_logits", "pred_logits.npy"), ("pred_boxes", "pred_boxes.npy")] {
        let diff = max_abs_diff(&flat(&out[key]), &read_npy(&reference(DETR, file)));
        assert!(diff < 1e-4, "{key}: {diff} off transformers'");
    }
    // id2label names each detection.
    let coco = zoo_datasets::coco::COCO_CATEGORY_NAMES;
    let detections = out["detections"][0].as_array().unwrap();
    assert!(!detections.is_empty());
    for d in detections {
        assert_eq!(d["category"].as_str().unwrap(), coco[d["category_id"].as_u64().unwrap() as usize]);
    }
    // Drawn on a photo with its names, from the cache alone.
    let drawn = tempfile::tempdir().unwrap();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/tests/data/grace_hopper.jpg");
    let out = zoo(
        &[
            "detect",
            "--model",
            DETR,
            "--image",
            photo.to_str().unwrap(),
            "--threshold",
            "0",
            "--out",
            drawn.path().to_str().unwrap(),
        ],
        "http://127.0.0.1:9",
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(coco.iter().skip(1).any(|name| text.contains(name)), "no COCO name in: {text}");
    assert!(drawn.path().join("grace_hopper.detections.png").is_file());
}

#[test]
fn downloads_are_checked_resumed_and_never_left_looking_complete() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    let repo_dir = home.path().join("hub").join(format!("models--{}", VIT.replace('/', "--")));
    let blobs = |suffix: &str| {
        cache_listing(&repo_dir).into_keys().filter(|k| k.starts_with("blobs/") && k.ends_with(suffix)).count()
    };

    // One byte changed on the way: the sha256 differs from X-Linked-Etag; nothing is kept.
    hub.set_fault(Fault::Corrupt);
    let err = failed(&classify_json(VIT, &hub.endpoint(), home.path(), &[]));
    assert!(err.contains("corrupt") && err.contains("sha256"), "{err}");
    assert_eq!(blobs(".incomplete"), 0);
    assert!(!cache_listing(&repo_dir).keys().any(|k| k.ends_with("model.safetensors")));

    // The connection breaks off half way: the part stays `.incomplete`, the next run resumes it
    // with a range request and checks the whole.
    hub.set_fault(Fault::Truncate);
    let err = failed(&classify_json(VIT, &hub.endpoint(), home.path(), &[]));
    assert!(err.contains("broke off"), "{err}");
    assert_eq!(blobs(".incomplete"), 1);
    let out = ok(&classify_json(VIT, &hub.endpoint(), home.path(), &[]));
    let diff = max_abs_diff(&flat(&out["logits"]), &read_npy(&reference(VIT, "logits.npy")));
    assert!(diff < 1e-4);
    assert_eq!(blobs(".incomplete"), 0);
    let log = hub.log.lock().unwrap();
    assert!(log.iter().any(|l| l.url.starts_with("/lfs/") && l.range.is_some()), "no range request: {log:?}");
}

#[test]
fn the_token_goes_to_the_hub_and_not_to_the_storage_host() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    ok(&classify_json(VIT, &hub.endpoint(), home.path(), &[("HF_TOKEN", "hf_secret")]));
    let log = hub.log.lock().unwrap();
    assert!(log.iter().filter(|l| l.url.contains("/resolve/")).all(|l| l.authorized), "{log:?}");
    assert!(log.iter().filter(|l| l.url.starts_with("/lfs/")).all(|l| !l.authorized), "{log:?}");
}

#[test]
fn missing_repositories_files_and_architectures_are_clear_errors() {
    let extra = tempfile::tempdir().unwrap();
    // A repository without weights, and one of an architecture the zoo does not have.
    let vit_config = std::fs::read_to_string(data(&format!("repos/{VIT}/config.json"))).unwrap();
    let no_weights = extra.path().join("someone/vit-without-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::write(no_weights.join("config.json"), &vit_config).unwrap();
    let convnext = extra.path().join("timm/convnext_tiny.in12k_ft_in1k");
    std::fs::create_dir_all(&convnext).unwrap();
    std::fs::write(convnext.join("config.json"), vit_config.replace("vit_base_patch16_224", "convnext_tiny")).unwrap();
    let hub = MockHub::start(vec![data("repos"), extra.path().to_path_buf()]);
    let home = tempfile::tempdir().unwrap();
    let endpoint = hub.endpoint();
    let run = |model: &str, endpoint: &str, env: &[(&str, &str)]| {
        let input = reference(VIT, "input.npy");
        failed(&zoo(
            &["classify", "--model", model, "--input-npy", input.to_str().unwrap()],
            endpoint,
            home.path(),
            env,
        ))
    };
    for (model, expected) in [
        ("nobody/nothing", "no model repository `nobody/nothing`"),
        ("someone/vit-without-weights", "has none of model.safetensors, pytorch_model.bin"),
        ("timm/convnext_tiny.in12k_ft_in1k", "architecture `convnext_tiny` is not supported"),
        (&format!("{VIT}@v9"), "has no revision `v9`"),
        ("not-a-name", "not a model repository name"),
    ] {
        let err = run(model, &endpoint, &[]);
        assert!(err.contains(expected), "{model}: {err}");
    }
    // Neither network nor cache.
    let err = run(TNT, "http://127.0.0.1:9", &[]);
    assert!(err.contains("cannot reach") && err.contains("not in the cache"), "{err}");
    let err = run(TNT, &endpoint, &[("HF_HUB_OFFLINE", "1")]);
    assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
}

/// huggingface_hub and the zoo read each other's downloads. Needs a Python with huggingface_hub
/// named by ZOO_HUB_PYTHON (CI sets it); without one the test says so and checks nothing.
#[test]
fn the_cache_is_shared_with_huggingface_hub() {
    let Ok(python) = std::env::var("ZOO_HUB_PYTHON") else {
        eprintln!("not run: set ZOO_HUB_PYTHON to a Python with huggingface_hub");
        return;
    };
    let hub = MockHub::start(vec![data("repos")]);
    let download = |home: &Path, offline: bool| {
        let script = format!(
            "from huggingface_hub import hf_hub_download\n\
             for f in ['config.json', 'model.safetensors']:\n    \
             print(hf_hub_download('{VIT}', f, local_files_only={}))",
            if offline { "True" } else { "False" }
        );
        let out = Command::new(&python)
            .args(["-c", &script])
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HOME", home)
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .output()
            .expect("python runs");
        assert!(out.status.success(), "huggingface_hub: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Python downloads, the zoo reads the cache offline.
    let python_home = tempfile::tempdir().unwrap();
    download(python_home.path(), false);
    let served = hub.requests().len();
    let out = ok(&classify_json(VIT, "http://127.0.0.1:9", python_home.path(), &[("HF_HUB_OFFLINE", "1")]));
    assert_eq!(hub.requests().len(), served);
    let diff = max_abs_diff(&flat(&out["logits"]), &read_npy(&reference(VIT, "logits.npy")));
    assert!(diff < 1e-4);
    // The zoo downloads, Python finds the files without asking the Hub.
    let zoo_home = tempfile::tempdir().unwrap();
    ok(&classify_json(VIT, &hub.endpoint(), zoo_home.path(), &[]));
    let paths = download(zoo_home.path(), true);
    let commit = commit_of(VIT);
    for (line, file) in paths.lines().zip(["config.json", "model.safetensors"]) {
        assert!(line.ends_with(&format!("snapshots/{commit}/{file}")), "{line}");
    }
}

/// `init_from = "<repo id>"` in a training config fine-tunes from the Hub's weights.
#[test]
fn training_starts_from_a_hub_model_by_name() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // The hub model's sizes with a 2-class head (left at its initialisation).
    let config = common::tiny_classification_run(work.path(), 2, 1, &format!("init_from = \"{VIT}\""));
    let out = zoo(&["train", "--config", config.to_str().unwrap()], &hub.endpoint(), home.path(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(hub.requests().iter().any(|r| r.contains("/resolve/main/model.safetensors")), "{:?}", hub.requests());
    assert!(work.path().join("run/best.bpk").is_file());

    // A name the Hub does not know is an error naming the field.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace(VIT, "nobody/nothing")).unwrap();
    let err = failed(&zoo(&["train", "--config", config.to_str().unwrap()], &hub.endpoint(), home.path(), &[]));
    assert!(err.contains("train.init_from = \"nobody/nothing\"") && err.contains("no model repository"), "{err}");
}

/// `--model` works wherever a config and weights are taken.
#[test]
fn every_command_takes_a_model_by_name() {
    let hub = MockHub::start(vec![data("repos")]);
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let input = reference(VIT, "input.npy");
    let (input, dir) = (input.to_str().unwrap(), out.path().to_str().unwrap());
    let bpk = out.path().join("vit.bpk");
    for args in [
        &["convert", "--model", VIT, "--out", bpk.to_str().unwrap()][..],
        &["attention", "--model", VIT, "--input-npy", input, "--npy-out", dir],
        &["bench", "--model", TNT, "--iters", "1", "--warmup", "0"],
    ] {
        let result = zoo(args, &hub.endpoint(), home.path(), &[]);
        assert!(result.status.success(), "{args:?}: {}", String::from_utf8_lossy(&result.stderr));
    }
    assert!(bpk.is_file() && out.path().join("attn_1.npy").is_file());
}
