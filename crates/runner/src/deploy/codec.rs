//! Decompression of images (gz, xz, bz2, zstd, zip with one member) on a blocking thread,
//! bounded in output bytes and ratio, stopped at the deploy deadline.

use super::*;

/// A compression format deploy can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gz,
    Xz,
    Bz2,
    Zstd,
    /// A zip archive holding exactly one file.
    Zip,
}

impl Codec {
    /// The codec of a job's `compression:`; `None` for no compression.
    pub fn of(c: Compression) -> Option<Codec> {
        match c {
            Compression::None => None,
            Compression::Gz => Some(Codec::Gz),
            Compression::Xz => Some(Codec::Xz),
            Compression::Bz2 => Some(Codec::Bz2),
            Compression::Zstd => Some(Codec::Zstd),
            Compression::Zip => Some(Codec::Zip),
        }
    }
}

/// Sets its flag when dropped: tells a blocking decompression to stop.
pub(super) struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decompresses `input` into the new file `out` on a blocking thread, bounded by `limits`
/// and `deadline`; stops when the future is dropped (job canceled or timed out).
pub async fn decompress(
    codec: Codec,
    input: &Path,
    out: &Path,
    limits: DecompressLimits,
    deadline: Instant,
) -> Result<u64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let guard = StopOnDrop(stop.clone());
    let (input, out) = (input.to_path_buf(), out.to_path_buf());
    let std_deadline = deadline.into_std();
    let task = tokio::task::spawn_blocking(move || {
        decompress_blocking(codec, &input, &out, limits, std_deadline, &stop)
    });
    let result = tokio::time::timeout_at(deadline, task).await;
    drop(guard);
    match result {
        Err(_) => Err("did not finish before the deploy timeout".into()),
        Ok(Err(e)) => Err(format!("decompression task failed: {e}")),
        Ok(Ok(r)) => r,
    }
}

/// Output bounded in size, by a deadline and a stop flag.
pub(super) struct Bounded<'a, W> {
    inner: W,
    written: u64,
    max: u64,
    why_max: String,
    deadline: std::time::Instant,
    stop: &'a AtomicBool,
}

impl<W: Write> Write for Bounded<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) || std::time::Instant::now() >= self.deadline {
            return Err(std::io::Error::other("stopped by the deploy timeout"));
        }
        let after = self.written.saturating_add(buf.len() as u64);
        if after > self.max {
            return Err(std::io::Error::other(self.why_max.clone()));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn decompress_blocking(
    codec: Codec,
    input: &Path,
    out: &Path,
    limits: DecompressLimits,
    deadline: std::time::Instant,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let source = std::fs::File::open(input).map_err(|e| e.to_string())?;
    let size = source.metadata().map_err(|e| e.to_string())?.len();
    let by_ratio = size.saturating_mul(limits.max_ratio).max(RATIO_FLOOR);
    let (max, why_max) = if by_ratio < limits.max_bytes {
        (
            by_ratio,
            format!(
                "it expands more than {} times its {size} bytes (a decompression bomb?)",
                limits.max_ratio
            ),
        )
    } else {
        (
            limits.max_bytes,
            format!("it expands beyond the {} bytes allowed", limits.max_bytes),
        )
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut sink = Bounded {
        inner: std::io::BufWriter::new(file),
        written: 0,
        max,
        why_max,
        deadline,
        stop,
    };
    match codec {
        Codec::Gz => {
            let mut reader = flate2::read::GzDecoder::new(std::io::BufReader::new(source));
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Xz => {
            let mut reader = std::io::BufReader::new(source);
            lzma_rs::xz_decompress(&mut reader, &mut sink).map_err(|e| match e {
                lzma_rs::error::Error::IoError(io) => io.to_string(),
                other => other.to_string(),
            })?;
        }
        Codec::Bz2 => {
            let mut reader = bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(source));
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Zstd => {
            let mut reader =
                ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(source))
                    .map_err(|e| format!("not a zstd stream: {e}"))?;
            std::io::copy(&mut reader, &mut sink).map_err(|e| e.to_string())?;
        }
        Codec::Zip => {
            let mut archive =
                zip::ZipArchive::new(source).map_err(|e| format!("not a zip archive: {e}"))?;
            let files = (0..archive.len())
                .filter(|i| archive.by_index_raw(*i).is_ok_and(|f| !f.is_dir()))
                .count();
            if archive.len() != 1 || files != 1 {
                return Err(format!(
                    "the zip archive holds {} entries; a zip image holds exactly one file",
                    archive.len()
                ));
            }
            let mut member = archive
                .by_index(0)
                .map_err(|e| format!("cannot read the zip member: {e}"))?;
            std::io::copy(&mut member, &mut sink).map_err(|e| e.to_string())?;
        }
    }
    sink.flush().map_err(|e| e.to_string())?;
    Ok(sink.written)
}
