//! The command line against the configurations GOST 3.2.6 printed with `-O yaml` for the same
//! arguments (`shared/golden/cli`), and against hand-written YAML.

use std::fs;
use std::path::Path;

use gost_api::{Config, Format};
use gost_proxy::cli::url::config_from_args;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden/cli");

/// Splits a command line as a POSIX shell would, for the quoting the golden files use.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '"' => {
                let word = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                            Some(next) => word.extend(['\\', next]),
                            None => word.push('\\'),
                        },
                        _ => word.push(c),
                    }
                }
            }
            '\'' => word
                .get_or_insert_with(String::new)
                .extend(chars.by_ref().take_while(|c| *c != '\'')),
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The `-L` and `-F` values of a GOST command line.
fn flags(words: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut services, mut nodes) = (Vec::new(), Vec::new());
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let list = match word.as_str() {
            "-L" => &mut services,
            "-F" => &mut nodes,
            other => panic!("unexpected argument {other:?}"),
        };
        list.push(words.next().expect("a value after the flag").clone());
    }
    (services, nodes)
}

#[test]
fn shell_words_follow_posix_quoting() {
    assert_eq!(
        shell_words(r#"-L "a b"  -F 'c "d"' e\ f "g\"h""#),
        ["-L", "a b", "-F", "c \"d\"", "e f", "g\"h"]
    );
}

#[test]
fn every_golden_command_line_gives_gosts_config() {
    let mut cases: Vec<_> = fs::read_dir(Path::new(GOLDEN))
        .expect("shared/golden/cli next to the workspace")
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("case-") && name.ends_with(".yaml")
        })
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 40, "golden cases in {GOLDEN}");
    for path in &cases {
        let text = fs::read_to_string(path).unwrap();
        let mut lines = text.splitn(3, '\n');
        let args = lines
            .next()
            .and_then(|l| l.strip_prefix("# args: "))
            .expect("# args: line");
        let exit = lines
            .next()
            .and_then(|l| l.strip_prefix("# exit: "))
            .expect("# exit: line");
        assert_eq!(
            exit.trim(),
            "0",
            "{}: only successful runs are recorded",
            path.display()
        );
        let expected = gost_api::from_str(lines.next().unwrap_or(""), Format::Yaml)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (services, nodes) = flags(&shell_words(args));
        let actual = config_from_args(&services, &nodes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(actual, expected, "{}: {args}", path.display());
    }
}

fn yaml(text: &str) -> Config {
    gost_api::from_str(text, Format::Yaml).unwrap()
}

#[test]
fn command_line_equals_hand_written_yaml() {
    let actual = config_from_args(
        &["socks5://u%40x:p%3Aw@:1080".to_string()],
        &["http://a:b@127.0.0.1:3128".to_string()],
    )
    .unwrap();
    let expected = yaml(
        r#"
services:
  - name: service-0
    addr: ":1080"
    handler:
      type: socks5
      chain: chain-0
      auth: {username: "u@x", password: "p:w"}
    listener:
      type: tcp
chains:
  - name: chain-0
    hops:
      - name: hop-0
        nodes:
          - name: node-0
            addr: 127.0.0.1:3128
            connector:
              type: http
              auth: {username: a, password: b}
            dialer:
              type: tcp
              tls: {serverName: 127.0.0.1}
"#,
    );
    assert_eq!(actual, expected);
}
