//! `http(s)://` images: streamed to a new file, bounded in size and time, from destinations the
//! host policy allows (checked after resolution, pinned, redirects followed by hand).

use super::*;

/// Largest image downloaded.
pub const MAX_DOWNLOAD: u64 = 16 << 30;

/// Streams `url` to the new file `out`, bounded in size and by `deadline`, from destinations
/// `policy` allows. Redirects are followed by hand (10 at most), each hop's address checked
/// and pinned; anything but a 2xx answer is an error naming the status.
pub async fn download(
    url: &str,
    out: &Path,
    deadline: Instant,
    policy: &HostPolicy,
) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let work = async {
        let mut current = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let mut hops = 0;
        let response = loop {
            if !matches!(current.scheme(), "http" | "https") {
                return Err(format!("{current}: only http and https are fetched"));
            }
            let host = current
                .host_str()
                .ok_or_else(|| format!("{current}: no host"))?
                .to_string();
            let port = current
                .port_or_known_default()
                .ok_or_else(|| format!("{current}: no port"))?;
            let addr = policy.pinned_address(&host, port).await?;
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(host.trim_matches(['[', ']']), addr)
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
            let response = client
                .get(current.clone())
                .send()
                .await
                .map_err(|e| format!("download failed: {e}"))?;
            if !response.status().is_redirection() {
                break response;
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("HTTP {} without a Location", response.status()))?;
            current = current
                .join(location)
                .map_err(|e| format!("redirect to {location:?}: {e}"))?;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("download failed: HTTP {status}"));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOWNLOAD) {
            return Err(format!("larger than the {MAX_DOWNLOAD} bytes allowed"));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .await
            .map_err(|e| format!("{}: {e}", out.display()))?;
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("download interrupted: {e}"))?;
            written += chunk.len() as u64;
            if written > MAX_DOWNLOAD {
                return Err(format!("larger than the {MAX_DOWNLOAD} bytes allowed"));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(())
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| "download did not finish before the deploy timeout".to_string())?
}
