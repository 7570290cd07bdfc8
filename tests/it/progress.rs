//! Progress as a person sees it: `wap` under a pseudo-terminal (`script`), its output replayed
//! through a small terminal emulator to get the final screen; and, off a terminal, no control
//! characters at all.

use std::process::{Command, Output};

use crate::cli::Example;

const CONF: &str = "conf/orders.yaml";

/// A source for `date` large enough that a debug build spends a while on it (so the bars get
/// drawn several times): `rows` orders, in 24 hourly order times.
fn big_source(ex: &Example, date: &str, rows: usize) {
    let dir = ex.dir.path().join("data/orders").join(date);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::with_capacity(rows * 48);
    csv.push_str("order_id,customer_id,amount,status,order_ts\n");
    for id in 0..rows {
        csv.push_str(&format!(
            "{id},{},{}.{:02},{},{date}T{:02}:00:00\n",
            id % 997,
            id % 900 + 1,
            id % 100,
            ["placed", "shipped", "returned"][id % 3],
            id % 24
        ));
    }
    std::fs::write(dir.join("orders.csv"), csv).unwrap();
}

/// Runs `wap args` on a 120x40 pseudo-terminal (stdout and stderr both on it).
fn on_terminal(ex: &Example, args: &[&str]) -> (Option<i32>, String) {
    let command = format!(
        "stty cols 120 rows 40; exec {} {}",
        env!("CARGO_BIN_EXE_wap"),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .current_dir(ex.dir.path())
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("`script` (util-linux) runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// The terminal's width (`stty cols` in [`on_terminal`]).
const COLUMNS: usize = 120;

/// The screen left by `raw` on a terminal [`COLUMNS`] wide: printable text (wrapping at the
/// last column), carriage returns, new lines, cursor moves (`A`, `B`, `C`, `D`, `G`) and
/// erasures (`K`, `J`); other sequences (colours, cursor visibility) change no text.
fn final_screen(raw: &str) -> Vec<String> {
    let mut screen: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut fin = ' ';
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() || p == '@' || p == '~' {
                        fin = p;
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params.trim_start_matches('?').parse().unwrap_or(0);
                match fin {
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => row += n.max(1),
                    'C' => col += n.max(1),
                    'D' => col = col.saturating_sub(n.max(1)),
                    'G' => col = n.max(1) - 1,
                    'K' | 'J' => {
                        while screen.len() <= row {
                            screen.push(Vec::new());
                        }
                        let line = &mut screen[row];
                        match n {
                            1 => line.iter_mut().take(col + 1).for_each(|x| *x = ' '),
                            2 => line.clear(),
                            _ => line.truncate(col),
                        }
                        if fin == 'J' && n != 1 {
                            screen.truncate(row + 1);
                        }
                    }
                    _ => {}
                }
            }
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
            }
            c if c.is_control() => {}
            c => {
                if col >= COLUMNS {
                    row += 1;
                    col = 0;
                }
                while screen.len() <= row {
                    screen.push(Vec::new());
                }
                let line = &mut screen[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    let mut lines: Vec<String> = screen
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_string())
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

fn has_escapes(s: &[u8]) -> bool {
    s.iter().any(|&b| b == 0x1b || b == b'\r')
}

#[test]
fn the_emulator_replays_redraws() {
    // Cursor up and erase, as the bars redraw: only the last text stays.
    let raw = "a bar\r\n\x1b[1A\r\x1b[2Kanother\r\n\x1b[1A\x1b[2K\x1b[32mdone\x1b[0m\r\n";
    assert_eq!(final_screen(raw), vec!["done"]);
    assert_eq!(final_screen("x\ry\n"), vec!["y"]);
    // A line wider than the terminal wraps: moving up one row lands in its first half.
    let wide = format!(
        "log\r\n{}\x1b[1A\r\x1b[2K\x1b[1B\r\x1b[2K",
        "x".repeat(COLUMNS + 5)
    );
    assert_eq!(final_screen(&wide), vec!["log"]);
}

#[test]
fn run_shows_progress_on_a_terminal_and_leaves_a_clean_screen() {
    let ex = Example::new();
    big_source(&ex, "2024-03-01", 300_000);
    let (code, raw) = on_terminal(&ex, &["run", "--conf", CONF, "--date", "2024-03-01", "-v"]);
    assert_eq!(code, Some(0), "{raw}");
    // The bars were drawn: the command, a phase, what was read and written.
    assert!(raw.contains("wap run"), "no progress drawn:\n{raw:?}");
    assert!(raw.contains("\x1b["), "bars move the cursor:\n{raw:?}");
    assert!(
        ["plan", "write", "audit"].iter().any(|p| raw.contains(p)),
        "no phase shown:\n{raw:?}"
    );
    assert!(raw.contains("read ") && raw.contains(" rows "), "{raw:?}");
    let screen = final_screen(&raw);
    let text = screen.join("\n");
    assert!(
        text.contains("published version 1"),
        "the result is on screen:\n{text}"
    );
    assert!(
        !text.contains("wap run") && !text.contains("[="),
        "the bars left something on screen:\n{text}"
    );
    // Logs went above the bars, whole: each log line is a log line only.
    let logs: Vec<&String> = screen.iter().filter(|l| l.contains(" INFO ")).collect();
    assert!(!logs.is_empty(), "-v logs:\n{text}");
    for l in logs {
        assert!(
            !l.contains("partitions ") && !l.contains("rules "),
            "a bar tore into a log line: {l}"
        );
    }
}

#[test]
fn audit_and_backfill_show_progress_on_a_terminal() {
    let ex = Example::new();
    for d in ["2024-03-01", "2024-03-02", "2024-03-03"] {
        big_source(&ex, d, 60_000);
    }
    let (code, raw) = on_terminal(&ex, &["audit", "--conf", CONF, "--date", "2024-03-01"]);
    assert_eq!(code, Some(0), "{raw}");
    assert!(raw.contains("wap audit"), "{raw:?}");
    let text = final_screen(&raw).join("\n");
    assert!(text.contains("audit passed"), "{text}");
    assert!(!text.contains("wap audit"), "{text}");

    let (code, raw) = on_terminal(
        &ex,
        &[
            "backfill",
            "--conf",
            CONF,
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-03",
            "--parallel",
            "1",
        ],
    );
    assert_eq!(code, Some(0), "{raw}");
    assert!(raw.contains("dates ["), "the dates bar:\n{raw:?}");
    assert!(raw.contains("/3") && raw.contains("left"), "{raw:?}");
    let text = final_screen(&raw).join("\n");
    assert!(
        text.contains("3 date(s): 3 published"),
        "the table ends the output:\n{text}"
    );
    assert!(!text.contains("dates ["), "{text}");
    for d in ["2024-03-01", "2024-03-02", "2024-03-03"] {
        assert!(text.lines().any(|l| l.starts_with(d)), "{d}:\n{text}");
    }
}

#[test]
fn no_progress_with_never_or_json_on_a_terminal() {
    let ex = Example::new();
    big_source(&ex, "2024-03-01", 60_000);
    for args in [
        &[
            "run",
            "--conf",
            CONF,
            "--date",
            "2024-03-01",
            "--progress",
            "never",
        ][..],
        &["run", "--conf", CONF, "--date", "2024-03-01", "--json"][..],
    ] {
        let (code, raw) = on_terminal(&ex, args);
        assert_eq!(code, Some(0), "{args:?}: {raw}");
        assert!(
            !raw.contains("wap run"),
            "{args:?}: progress drawn:\n{raw:?}"
        );
    }
    // `always` draws over --json.
    let (code, raw) = on_terminal(
        &ex,
        &[
            "audit",
            "--conf",
            CONF,
            "--date",
            "2024-03-01",
            "--json",
            "--progress",
            "always",
        ],
    );
    assert_eq!(code, Some(0), "{raw}");
    assert!(raw.contains("wap audit"), "{raw:?}");
}

fn piped(ex: &Example, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wap"))
        .args(args)
        .current_dir(ex.dir.path())
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color")
        .output()
        .unwrap()
}

#[test]
fn off_a_terminal_there_are_no_control_characters() {
    let ex = Example::new();
    big_source(&ex, "2024-03-01", 60_000);
    big_source(&ex, "2024-03-02", 60_000);
    // Logs and results, no progress, no colours.
    let out = piped(&ex, &["run", "--conf", CONF, "--date", "2024-03-01", "-v"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!has_escapes(&out.stderr), "{stderr:?}");
    assert!(!has_escapes(&out.stdout));
    assert!(!stderr.contains("wap run:"), "{stderr}");

    // `always`: plain progress lines, still no control characters.
    let out = piped(
        &ex,
        &[
            "backfill",
            "--conf",
            CONF,
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-02",
            "--progress",
            "always",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wap backfill: dates 2/2 after"), "{stderr}");
    assert!(!has_escapes(&out.stderr), "{stderr:?}");
    let out = piped(
        &ex,
        &[
            "audit",
            "--conf",
            CONF,
            "--date",
            "2024-03-02",
            "--progress",
            "always",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wap audit: done after"), "{stderr}");
    assert!(stderr.contains("rules "), "{stderr}");
    assert!(!has_escapes(&out.stderr), "{stderr:?}");
}
