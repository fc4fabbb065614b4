//! Files of Hugging Face Hub model repositories, fetched as the Hub's own Python client
//! (`huggingface_hub.hf_hub_download`) fetches them and kept in the same cache, so that a file
//! either of them downloaded is reused by the other.
//!
//! The cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) holds per
//! repository `models--{owner}--{name}/`: `blobs/{etag}` (the file's content; for files in Git
//! LFS the etag is their sha256), `snapshots/{commit}/{file}` (a relative link to the blob) and
//! `refs/{revision}` (the commit a branch pointed at when last asked). A download goes to
//! `blobs/{etag}.incomplete` (resumed by a range request when one is there), is checked for its
//! size and, for LFS files, its sha256, and only then renamed to its blob: an interrupted or
//! corrupt download never looks complete.
//!
//! Settings, as `huggingface_hub` reads them: `HF_ENDPOINT` (default `https://huggingface.co`),
//! `HF_TOKEN` (else the token file `$HF_HOME/token`) sent to the endpoint only, never to the
//! storage host a large file redirects to, and `HF_HUB_OFFLINE=1` to use the cache alone. When
//! the Hub cannot be reached, a file already in the cache is used.
//!
//! Written on `ureq` rather than the `hf-hub` crate: its 0.4 releases check no sha256 and read
//! neither `HF_TOKEN` nor `HF_HUB_OFFLINE` nor `HF_HUB_CACHE`, and 1.0 brings an async runtime and
//! the Xet client (about 280 crates) into every build.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Why a file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{0}` is not a model repository name: expected `owner/name` (letters, digits, `-`, `_`, `.`)")]
    BadRepoId(String),
    #[error(
        "{endpoint}: no model repository `{repo}` (a private or gated one needs a token: set HF_TOKEN or run `hf auth login`)"
    )]
    RepoNotFound { repo: String, endpoint: String },
    #[error("{endpoint}: model repository `{repo}` has no revision `{revision}`")]
    RevisionNotFound { repo: String, revision: String, endpoint: String },
    #[error("{endpoint}: model repository `{repo}` has no file `{file}` at revision `{revision}`")]
    FileNotFound { repo: String, revision: String, file: String, endpoint: String },
    #[error(
        "{url}: access refused ({status}{reason}): the repository is gated or private; set HF_TOKEN to a token that may read it"
    )]
    Unauthorized { url: String, status: u16, reason: String },
    #[error("{url}: the Hub answered {status}{reason}")]
    Http { url: String, status: u16, reason: String },
    #[error("cannot reach {url} ({message}), and {file} of `{repo}` is not in the cache {cache}")]
    Network { url: String, message: String, repo: String, file: String, cache: PathBuf },
    #[error(
        "HF_HUB_OFFLINE is set and {file} of `{repo}` (revision `{revision}`) is not in the cache {cache}: run once with the network, or unset HF_HUB_OFFLINE"
    )]
    NotCached { repo: String, revision: String, file: String, cache: PathBuf },
    #[error("{url}: the download broke off after {received} bytes{of}; run again to resume it from {partial}")]
    BrokenOff { url: String, received: u64, of: String, partial: PathBuf },
    #[error("{url}: the download is corrupt: {problem}; it was deleted, run again to fetch it anew")]
    Corrupt { url: String, problem: String },
    #[error("{url}: the Hub's answer lacks {header}")]
    MissingHeader { url: String, header: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> HubError + '_ {
    move |source| HubError::Io { path: path.to_path_buf(), source }
}

/// A client of one Hub endpoint and one cache.
pub struct Hub {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    offline: bool,
    progress: bool,
    agent: ureq::Agent,
}

/// What the Hub says about a file before it is downloaded.
struct FileMetadata {
    commit: String,
    /// The blob's name: the sha256 of an LFS file, the git object id of another.
    etag: String,
    size: Option<u64>,
    /// Where the content is: the resolve URL itself, or the storage host a large file redirects to.
    location: String,
}

impl Hub {
    /// The endpoint, cache, token and offline mode from the environment, as `huggingface_hub`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home_dir = || var("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".cache")).join("huggingface")
        });
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self::new(&endpoint, &cache, token, offline)
    }

    pub fn new(endpoint: &str, cache: &Path, token: Option<String>, offline: bool) -> Self {
        // Redirects are followed by hand: relative ones (a renamed repository) with the token,
        // the storage host's without it, and the LFS headers are read from the first answer.
        let agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .user_agent(concat!("zoo/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache: cache.to_path_buf(),
            token,
            offline,
            progress: true,
            agent,
        }
    }

    /// No progress bars (tests, `--json` consumers).
    pub fn quiet(mut self) -> Self {
        self.progress = false;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// `models--owner--name` in the cache.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The local path of `file` in `repo` at `revision` (a branch, tag or commit), downloaded
    /// first if the cache lacks it.
    pub fn file(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf, HubError> {
        check_repo_id(repo)?;
        let cached = self.cached(repo, revision, file);
        if self.offline {
            return cached.ok_or_else(|| HubError::NotCached {
                repo: repo.into(),
                revision: revision.into(),
                file: file.into(),
                cache: self.cache.clone(),
            });
        }
        let url = format!("{}/{repo}/resolve/{}/{file}", self.endpoint, encode_revision(revision));
        let meta = match self.metadata(&url, repo, revision, file) {
            Ok(meta) => meta,
            Err(HubError::Network { .. }) if cached.is_some() => {
                let path = cached.expect("checked");
                eprintln!("warning: the Hub is not reachable; using {} from the cache", path.display());
                return Ok(path);
            }
            Err(e) => return Err(e),
        };
        let repo_dir = self.repo_dir(repo);
        let blob = repo_dir.join("blobs").join(&meta.etag);
        if !blob.is_file() {
            self.download(&meta, &blob, repo, file)?;
        }
        let pointer = repo_dir.join("snapshots").join(&meta.commit).join(file);
        link_pointer(&blob, &pointer)?;
        if revision != meta.commit {
            write_atomically(&repo_dir.join("refs").join(revision), meta.commit.as_bytes())?;
        }
        Ok(pointer)
    }

    /// The cached file of `revision`, if the cache has it (through `refs/{revision}` for a branch).
    pub fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let repo_dir = self.repo_dir(repo);
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?.trim().to_string()
        };
        let path = repo_dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    fn request(&self, method: &str, url: &str, with_token: bool) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut request = match method {
            "HEAD" => self.agent.head(url),
            _ => self.agent.get(url),
        }
        .header("Accept-Encoding", "identity");
        if with_token && let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request
    }

    /// HEAD of the resolve URL: the commit, the etag, the size and where the content is.
    fn metadata(&self, url: &str, repo: &str, revision: &str, file: &str) -> Result<FileMetadata, HubError> {
        let mut current = url.to_string();
        for _ in 0..10 {
            let response = self.request("HEAD", &current, true).call().map_err(|e| HubError::Network {
                url: current.clone(),
                message: e.to_string(),
                repo: repo.into(),
                file: file.into(),
                cache: self.cache.clone(),
            })?;
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let location = match status {
                300..=399 => {
                    let Some(location) = header("location") else {
                        return Err(HubError::MissingHeader { url: current, header: "Location" });
                    };
                    // A relative redirect stays on the Hub (a renamed repository): ask again there.
                    if location.starts_with('/') {
                        current = format!("{}{location}", origin(&current));
                        continue;
                    }
                    // An absolute one leads to the storage of a large file, which the Hub's
                    // answer describes (X-Linked-Etag, X-Linked-Size).
                    Some(location)
                }
                200 => Some(current.clone()),
                _ => None,
            };
            if let Some(location) = location {
                let missing = |header| HubError::MissingHeader { url: current.clone(), header };
                let etag = header("x-linked-etag").or_else(|| header("etag")).ok_or_else(|| missing("ETag"))?;
                // A redirect's own Content-Length is its body's, not the file's.
                let length = if status == 200 { header("content-length") } else { None };
                return Ok(FileMetadata {
                    commit: header("x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?,
                    etag: normalize_etag(&etag),
                    size: header("x-linked-size").or(length).and_then(|s| s.parse().ok()),
                    location,
                });
            }
            let reason = header("x-error-message").map(|m| format!(": {m}")).unwrap_or_default();
            return Err(match (status, header("x-error-code").as_deref()) {
                (_, Some("RepoNotFound")) => {
                    HubError::RepoNotFound { repo: repo.into(), endpoint: self.endpoint.clone() }
                }
                (_, Some("RevisionNotFound")) => HubError::RevisionNotFound {
                    repo: repo.into(),
                    revision: revision.into(),
                    endpoint: self.endpoint.clone(),
                },
                (_, Some("EntryNotFound")) | (404, None) => HubError::FileNotFound {
                    repo: repo.into(),
                    revision: revision.into(),
                    file: file.into(),
                    endpoint: self.endpoint.clone(),
                },
                (401 | 403, _) | (_, Some("GatedRepo")) => HubError::Unauthorized { url: current, status, reason },
                _ => HubError::Http { url: current, status, reason },
            });
        }
        Err(HubError::Http { url: url.into(), status: 310, reason: ": too many redirects".into() })
    }

    /// Downloads the content into `blob` through `blob.incomplete`, checking size and sha256.
    fn download(&self, meta: &FileMetadata, blob: &Path, repo: &str, file: &str) -> Result<(), HubError> {
        let dir = blob.parent().expect("blobs/ holds the blob");
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|size| have > size) {
            have = 0;
        }
        // The token goes to the Hub, not to the storage host of a redirect.
        let same_host = origin(&meta.location) == origin(&self.endpoint);
        let mut request = self.request("GET", &meta.location, same_host);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let network = |e: ureq::Error| HubError::Network {
            url: meta.location.clone(),
            message: e.to_string(),
            repo: repo.into(),
            file: file.into(),
            cache: self.cache.clone(),
        };
        let response = request.call().map_err(network)?;
        let status = response.status().as_u16();
        let mut hasher = Sha256::new();
        let mut out = match status {
            206 if have > 0 => {
                // Resuming: the bytes already there count towards the hash.
                let mut old = File::open(&partial).map_err(io_error(&partial))?;
                io::copy(&mut (&mut old).take(have), &mut HashWriter(&mut hasher)).map_err(io_error(&partial))?;
                fs::OpenOptions::new().append(true).open(&partial).map_err(io_error(&partial))?
            }
            200 => {
                have = 0;
                File::create(&partial).map_err(io_error(&partial))?
            }
            _ => {
                let reason = response
                    .headers()
                    .get("x-error-message")
                    .and_then(|v| v.to_str().ok())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(HubError::Http { url: meta.location.clone(), status, reason });
            }
        };
        let bar = if self.progress { ProgressBar::new(meta.size.unwrap_or(0)) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        bar.set_position(have);
        let mut body = response.into_body();
        let mut reader = body.as_reader();
        let mut buffer = vec![0; 1 << 16];
        let mut received = have;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // What was received stays in `.incomplete` and the next run resumes from it.
                Err(e) => {
                    bar.abandon();
                    let of = format!(" ({e})");
                    return Err(HubError::BrokenOff { url: meta.location.clone(), received, of, partial });
                }
            };
            out.write_all(&buffer[..n]).map_err(io_error(&partial))?;
            hasher.update(&buffer[..n]);
            received += n as u64;
            bar.set_position(received);
        }
        out.sync_all().map_err(io_error(&partial))?;
        drop(out);
        bar.finish_and_clear();
        let corrupt = |problem: String| {
            let _ = fs::remove_file(&partial);
            HubError::Corrupt { url: meta.location.clone(), problem }
        };
        match meta.size {
            // A connection closed early: what came stays `.incomplete` for the next run to resume.
            Some(size) if received < size => {
                let of = format!(" of {size}");
                return Err(HubError::BrokenOff { url: meta.location.clone(), received, of, partial });
            }
            Some(size) if received > size => {
                return Err(corrupt(format!("{received} bytes received, the Hub announced {size}")));
            }
            _ => {}
        }
        if is_sha256(&meta.etag) {
            let sha = hex(&hasher.finalize());
            if sha != meta.etag {
                return Err(corrupt(format!("its sha256 is {sha}, the Hub's is {}", meta.etag)));
            }
        }
        fs::rename(&partial, blob).map_err(io_error(blob))
    }
}

/// `owner/name` of the Hub's allowed characters.
pub fn check_repo_id(repo: &str) -> Result<(), HubError> {
    if repo.contains('@') || !zoo_train::config::is_hub_name(Path::new(repo)) {
        return Err(HubError::BadRepoId(repo.into()));
    }
    Ok(())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `W/"abc"` -> `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// A branch like `refs/pr/1` goes into the URL as one segment.
fn encode_revision(revision: &str) -> String {
    revision.replace('/', "%2F")
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshots/{commit}/{file}` -> the blob, as a relative link (a copy where links are refused).
fn link_pointer(blob: &Path, pointer: &Path) -> Result<(), HubError> {
    let dir = pointer.parent().expect("a snapshot file has a folder");
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    if pointer.is_file() {
        return Ok(());
    }
    let _ = fs::remove_file(pointer);
    #[cfg(unix)]
    {
        // snapshots/{commit}/a/b/file -> ../../../../blobs/{etag}: up to the repository's folder.
        let repo_dir = blob.parent().and_then(Path::parent).expect("blobs/ is in the repository's folder");
        let depth = pointer.strip_prefix(repo_dir).map(|p| p.components().count() - 1).unwrap_or(2);
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(blob.file_name().expect("named"));
        if std::os::unix::fs::symlink(&target, pointer).is_ok() {
            return Ok(());
        }
    }
    fs::copy(blob, pointer).map(|_| ()).map_err(io_error(pointer))
}

/// Writes through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let dir = path.parent().expect("a file in a folder");
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let temp = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
    fs::write(&temp, bytes).map_err(io_error(&temp))?;
    fs::rename(&temp, path).map_err(io_error(path))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "facebook/detr-resnet-50"] {
            assert!(check_repo_id(ok).is_ok(), "{ok}");
        }
        for bad in ["vit", "a/b/c", "/name", "owner/", "o/../x", "o/n m", "-o/n", "o/n@main", "runs/best.bpk"] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn etags_and_origins() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(origin("http://127.0.0.1:80/a/b?c"), "http://127.0.0.1:80");
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
        assert_eq!(encode_revision("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
