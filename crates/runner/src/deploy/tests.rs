#![allow(clippy::unwrap_used)]
use super::*;

/// A one-route HTTP server: `/final` answers `data`, anything else redirects to
/// `location`. Counts the connections it accepts.
async fn server(
    bind: &str,
    location: Option<String>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let location = location.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let answer = match (&location, text.starts_with("GET /final ")) {
                    (Some(to), false) => {
                        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                    }
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndata".to_string(),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, hits)
}

fn lab_with_names(names: &[(&str, &str)]) -> HostPolicy {
    let mut policy = HostPolicy::lab(
        &[],
        vec![crate::policy::Cidr::parse("127.0.0.2").unwrap()],
        DecompressLimits::default(),
    )
    .unwrap();
    policy.resolver = crate::policy::Resolver::Fixed(
        names
            .iter()
            .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
            .collect(),
    );
    policy
}

#[tokio::test]
async fn a_redirect_to_loopback_is_refused_before_connecting() {
    let (canary, canary_hits) = server("127.0.0.1:0", None).await;
    let (mirror, mirror_hits) = server(
        "127.0.0.2:0",
        Some(format!("http://canary.example:{canary}/image")),
    )
    .await;
    let policy = lab_with_names(&[
        ("mirror.example", "127.0.0.2"),
        ("canary.example", "127.0.0.1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let e = download(
        &format!("http://mirror.example:{mirror}/image"),
        &dir.path().join("out"),
        deadline,
        &policy,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("canary.example") && e.contains("loopback"),
        "{e}"
    );
    assert_eq!(mirror_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the canary was reached"
    );
    // A direct URL to the canary's address is refused the same way.
    let e = download(
        &format!("http://127.0.0.1:{canary}/image"),
        &dir.path().join("out2"),
        deadline,
        &policy,
    )
    .await
    .unwrap_err();
    assert!(e.contains("loopback"), "{e}");
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the canary was reached"
    );
}

#[tokio::test]
async fn downloads_connect_to_the_checked_address_on_every_hop() {
    // `mirror.example` exists only in the injected table: a download that succeeds
    // connected to the pinned address, never to a second resolution.
    let (mirror, hits) = server("127.0.0.2:0", Some("/final".to_string())).await;
    let policy = lab_with_names(&[("mirror.example", "127.0.0.2")]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    download(
        &format!("http://mirror.example:{mirror}/image"),
        &out,
        deadline,
        &policy,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"data");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one connection per hop");
    // The file is created new: a second download to it is refused, never overwritten.
    let e = download(
        &format!("http://mirror.example:{mirror}/final"),
        &out,
        deadline,
        &policy,
    )
    .await
    .unwrap_err();
    assert!(e.contains("exists"), "{e}");
}

#[tokio::test]
async fn decompression_is_bounded_in_size_and_ratio() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("zeros.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&input).unwrap(),
        flate2::Compression::best(),
    );
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..80 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let limits = DecompressLimits {
        max_bytes: 16 << 30,
        max_ratio: 2,
    };
    let e = decompress(Codec::Gz, &input, &dir.path().join("a"), limits, deadline)
        .await
        .unwrap_err();
    assert!(e.contains("times its"), "{e}");
    let limits = DecompressLimits {
        max_bytes: 1 << 20,
        max_ratio: 1_000_000,
    };
    let e = decompress(Codec::Gz, &input, &dir.path().join("b"), limits, deadline)
        .await
        .unwrap_err();
    assert!(e.contains("1048576 bytes allowed"), "{e}");
    let n = decompress(
        Codec::Gz,
        &input,
        &dir.path().join("c"),
        DecompressLimits::default(),
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(n, 80 << 20);
    // Output files are created new.
    let e = decompress(
        Codec::Gz,
        &input,
        &dir.path().join("c"),
        DecompressLimits::default(),
        deadline,
    )
    .await
    .unwrap_err();
    assert!(e.contains("exists"), "{e}");
}

/// bz2, zstd and zip images as LAVA's `compression:` names them; the encoders are the
/// crates' own (no tool on the host is needed).
fn compressed(codec: Codec, data: &[u8], members: usize) -> Vec<u8> {
    use std::io::Write as _;
    match codec {
        Codec::Bz2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Codec::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        Codec::Zip => {
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for i in 0..members {
                w.start_file(format!("image-{i}.img"), options).unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap().into_inner()
        }
        Codec::Gz | Codec::Xz => unreachable!("covered by other tests"),
    }
}

#[tokio::test]
async fn bz2_zstd_and_zip_decompress_within_the_same_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let zeros = vec![0u8; 80 << 20];
    for codec in [Codec::Bz2, Codec::Zstd, Codec::Zip] {
        let name = format!("{codec:?}");
        let input = dir.path().join(format!("{name}.in"));
        std::fs::write(&input, compressed(codec, &data, 1)).unwrap();
        let out = dir.path().join(format!("{name}.out"));
        let n = decompress(codec, &input, &out, DecompressLimits::default(), deadline)
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64, "{name}");
        assert!(std::fs::read(&out).unwrap() == data, "{name}");
        // A bomb is cut at the ratio bound, as for gz.
        let bomb = dir.path().join(format!("{name}.bomb"));
        std::fs::write(&bomb, compressed(codec, &zeros, 1)).unwrap();
        let limits = DecompressLimits {
            max_bytes: 16 << 30,
            max_ratio: 2,
        };
        let e = decompress(
            codec,
            &bomb,
            &dir.path().join(format!("{name}.b")),
            limits,
            deadline,
        )
        .await
        .unwrap_err();
        assert!(e.contains("times its"), "{name}: {e}");
    }
    let two = dir.path().join("two.zip");
    std::fs::write(&two, compressed(Codec::Zip, b"x", 2)).unwrap();
    let e = decompress(
        Codec::Zip,
        &two,
        &dir.path().join("two.out"),
        DecompressLimits::default(),
        deadline,
    )
    .await
    .unwrap_err();
    assert!(e.contains("holds 2 entries"), "{e}");
    let junk = dir.path().join("junk.zst");
    std::fs::write(&junk, b"not zstd at all").unwrap();
    let e = decompress(
        Codec::Zstd,
        &junk,
        &dir.path().join("junk.out"),
        DecompressLimits::default(),
        deadline,
    )
    .await
    .unwrap_err();
    assert!(e.contains("zstd"), "{e}");
}

#[test]
fn downloads_keep_the_url_file_name_without_the_compression_extension() {
    let image = |url: &str, compression| Image {
        source: ImageSource::Http(url.into()),
        compression,
        format: None,
        image_arg: None,
        sha256sum: None,
        kind: None,
    };
    for (url, c, want) in [
        (
            "https://h/a/rootfs.ext4.zst",
            Compression::Zstd,
            Some("rootfs.ext4"),
        ),
        (
            "https://h/a/rootfs.ext4.zstd",
            Compression::Zstd,
            Some("rootfs.ext4"),
        ),
        ("https://h/a/Image.gz?x=1", Compression::Gz, Some("Image")),
        ("https://h/a/disk.img", Compression::None, Some("disk.img")),
        ("https://h/a/", Compression::None, None),
        ("https://h/a/..", Compression::None, None),
        ("https://h/a/.hidden", Compression::None, None),
    ] {
        assert_eq!(downloaded_name(&image(url, c)).as_deref(), want, "{url}");
    }
}

#[test]
fn downloads_urls_find_regular_files_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rootfs.img"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
    assert!(downloaded_file(dir.path(), "rootfs.img").is_ok());
    let e = downloaded_file(dir.path(), "link").unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let e = downloaded_file(dir.path(), "other").unwrap_err();
    assert!(e.contains("fetched: link, rootfs.img"), "{e}");
}

#[test]
fn image_names_are_single_safe_file_names() {
    for good in ["rootfs", "kernel", "disk-2", "a.b_c", "x"] {
        assert_eq!(check_image_name(good), Ok(()), "{good}");
    }
    let long = "a".repeat(MAX_IMAGE_NAME + 1);
    for bad in [
        "",
        ".hidden",
        "..",
        "../x",
        "/abs",
        "a/b",
        "Root",
        "a b",
        "é",
        long.as_str(),
    ] {
        assert!(check_image_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn image_arg_substitutes_and_fixes_drive_format() {
    let mut paths = BTreeMap::new();
    paths.insert("rootfs", PathBuf::from("/w/rootfs.overlay.qcow2"));
    paths.insert("kernel", PathBuf::from("/w/kernel"));
    let mut disks = BTreeMap::new();
    disks.insert("rootfs", "raw".to_string());
    assert_eq!(
        image_arg("-drive format=raw,file={rootfs}", &paths, &disks).unwrap(),
        vec!["-drive", "file=/w/rootfs.overlay.qcow2,format=qcow2"]
    );
    assert_eq!(
        image_arg(
            "-kernel {kernel} -append \"console=ttyS0 root=/dev/ram0\"",
            &paths,
            &disks
        )
        .unwrap(),
        vec![
            "-kernel",
            "/w/kernel",
            "-append",
            "console=ttyS0 root=/dev/ram0"
        ]
    );
}

#[test]
fn image_arg_refuses_unknown_placeholders_and_bad_quotes() {
    let paths = BTreeMap::new();
    let disks = BTreeMap::new();
    let e = image_arg("-kernel {kernle}", &paths, &disks).unwrap_err();
    assert!(e.contains("{kernle}"), "{e}");
    assert!(image_arg("-append \"unterminated", &paths, &disks).is_err());
}

#[test]
fn shell_syntax_in_image_arg_stays_literal() {
    let paths = BTreeMap::new();
    let disks = BTreeMap::new();
    assert_eq!(
        image_arg("-append '$(reboot)'", &paths, &disks).unwrap(),
        vec!["-append", "$(reboot)"]
    );
}
