use super::*;
use proptest::prelude::*;

#[test]
fn removes_csi_osc_and_charset_sequences() {
    assert_eq!(strip(b"\x1b[32mok\x1b[0m"), b"ok");
    assert_eq!(strip(b"/ # \x1b[6necho hi"), b"/ # echo hi");
    assert_eq!(strip(b"\x1b]0;title\x07prompt# "), b"prompt# ");
    assert_eq!(strip(b"\x1b]0;title\x1b\\x"), b"x");
    assert_eq!(strip(b"\x1b(Bplain"), b"plain");
    assert_eq!(strip(b"a\r\nb\tc\x07"), b"a\r\nb\tc");
}

#[test]
fn keeps_invalid_utf8() {
    assert_eq!(strip(b"\xff\xfe ok"), b"\xff\xfe ok");
    assert_eq!(filter_for_terminal(b"\xff\xfe ok"), b"\xff\xfe ok");
}

#[test]
fn unterminated_sequence_is_abandoned() {
    for opener in [&b"\x1b["[..], b"\x1b]52;c;"] {
        let mut input = opener.to_vec();
        input.extend(std::iter::repeat_n(b'1', MAX_SEQUENCE + 10));
        input.extend(b"tail");
        for out in [strip(&input), filter_for_terminal(&input)] {
            assert!(
                out.ends_with(b"tail") && !out.contains(&0x1b),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}

fn shown(input: &[u8]) -> String {
    String::from_utf8_lossy(&filter_for_terminal(input)).into_owned()
}

#[test]
fn the_filter_keeps_text_colours_and_cursor_movement() {
    let keep: &[&[u8]] = &[
        b"plain text, \xc3\xa9t\xc3\xa9 \xe2\x9b\x84 \xc2\xa2",
        b"a\r\nb\tc\x08d",
        b"\x1b[1;32mgreen\x1b[0m \x1b[m \x1b[38:2::10:20:30mrgb\x1b[38;5;200m",
        b"\x1b[A\x1b[2B\x1b[10C\x1b[D\x1b[E\x1b[F\x1b[5G\x1b[3;4H\x1b[3;4f\x1b[7d",
        b"\x1b[K\x1b[2K\x1b[J\x1b[2J",
    ];
    for k in keep {
        assert_eq!(shown(k), String::from_utf8_lossy(k), "{k:?}");
    }
}

#[test]
fn the_filter_drops_strings_modes_reports_and_unknown_sequences() {
    let cases: &[(&[u8], &str)] = &[
        (b"\x1b]0;evil title\x07after", "after"),
        (b"\x1b]2;title\x1b\\after", "after"),
        (b"\x1b]52;c;ZWNobyBwd25lZA==\x07clip", "clip"),
        (
            b"\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\",
            "link",
        ),
        (b"\x1bP+q544e\x1b\\dcs", "dcs"),
        (b"\x1b_apc payload\x1b\\apc", "apc"),
        (b"\x1b^pm\x1b\\pm", "pm"),
        (b"\x1bXsos\x1b\\sos", "sos"),
        (b"\x1b[6n\x1b[21t\x1b[c\x1b[>c", ""),
        (b"\x1b[?1049h\x1b[?25l\x1b[?1000h\x1b[4h", ""),
        (b"\x1b[>4;2m\x1b[?1m\x1b[0 q\x1b[3J", ""),
        (b"\x1bc\x1b7\x1b8\x1b(0\x1b)B\x1b#8\x1b=\x1bN", ""),
        (
            b"bell\x07 so\x0e si\x0f nul\x00 del\x7f",
            "bell so si nul del",
        ),
        (b"csi\xc2\x9b31m osc\xc2\x9d0;t\xc2\x9c", "csi31m osc0;t"),
    ];
    for (input, want) in cases {
        assert_eq!(shown(input), *want, "{input:?}");
    }
}

#[test]
fn a_c1_control_split_between_chunks_or_around_dropped_bytes_is_dropped() {
    let mut f = TerminalFilter::new();
    let mut out = Vec::new();
    f.feed(b"a\xc2", &mut out);
    assert_eq!(out, b"a");
    f.feed(b"\x9b6n b\xc2", &mut out);
    f.feed(b"\xa2", &mut out);
    assert_eq!(out, b"a6n b\xc2\xa2");
    // A dropped control or sequence between lead and C1 byte does not join them.
    assert_eq!(shown(b"x\xc2\x00\x9by"), "xy");
    assert_eq!(shown(b"x\xc2\x1b]0;t\x07\x9by"), "xy");
    assert_eq!(filter_for_terminal(b"\xc2\xc2\x9b\x9b"), b"\x9b");
    // A lead byte at the very end is kept.
    assert_eq!(filter_for_terminal(b"end\xc2"), b"end\xc2");
}

proptest! {
    #[test]
    fn split_feeding_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
        let cut = cut.min(data.len());
        let whole = strip(&data);
        let mut s = AnsiStripper::new();
        let mut out = Vec::new();
        s.feed(&data[..cut], &mut out);
        s.feed(&data[cut..], &mut out);
        prop_assert_eq!(whole, out);

        let whole = filter_for_terminal(&data);
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.feed(&data[..cut], &mut out);
        f.feed(&data[cut..], &mut out);
        f.finish(&mut out);
        prop_assert_eq!(whole, out);
    }

    #[test]
    fn text_without_controls_is_unchanged(text in "[ -~]{0,200}") {
        prop_assert_eq!(strip(text.as_bytes()), text.as_bytes().to_vec());
        prop_assert_eq!(filter_for_terminal(text.as_bytes()), text.as_bytes().to_vec());
    }

    #[test]
    fn filtered_output_holds_only_allowed_sequences(
        data in proptest::collection::vec(
            prop_oneof![
                Just(0x1bu8), Just(b'['), Just(b']'), Just(b'?'), Just(b';'), Just(b'm'),
                Just(b'H'), Just(b'P'), Just(0x07), Just(b'\\'), Just(0xc2), Just(0x9b),
                Just(0x00), any::<u8>(),
            ],
            0..300,
        )
    ) {
        let out = filter_for_terminal(&data);
        prop_assert_eq!(filter_for_terminal(&out), out.clone());
        prop_assert!(!out.windows(2).any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])));
        let mut rest = out.as_slice();
        while let Some(at) = rest.iter().position(|b| *b == 0x1b) {
            let seq = &rest[at..];
            let end = seq.iter().position(|b| (0x40..=0x7e).contains(b) && *b != b'[');
            let end = end.map(|e| e + 1).unwrap_or(seq.len());
            prop_assert!(allowed_csi(&seq[..end]), "{:?}", &seq[..end]);
            rest = &seq[end..];
        }
        prop_assert!(!out.iter().any(|b| matches!(b, 0x00..=0x07 | 0x0b | 0x0c | 0x0e..=0x1a | 0x1c..=0x1f | 0x7f)));
    }
}
