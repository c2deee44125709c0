//! Bounds: what one apply may ask of the server (its bytes, the resource
//! counts it leads to) and the YAML shapes refused before parsing.

use super::*;

/// The problem of a refused input, with its line and column.
fn refused(input: &str) -> (String, Location) {
    let e = parse_documents(input).unwrap_err();
    let Problem::YamlRefused { reason } = &e.problem else {
        panic!("not refused by the shape check: {e}");
    };
    (reason.clone(), e.location.unwrap())
}

#[test]
fn apply_bytes_at_the_limit_are_accepted_and_one_more_is_refused_naming_the_setting() {
    let config = ServerConfig::default();
    assert_eq!(config.apply_bytes_max, 1 << 20);
    assert_eq!(config.check_apply_bytes(1 << 20), Ok(()));
    let e = config.check_apply_bytes((1 << 20) + 1).unwrap_err();
    assert_eq!(e.setting(), "applyBytesMax");
    let e = e.to_string();
    assert!(e.contains("1048577 bytes"), "{e}");
    assert!(e.contains("applyBytesMax is 1048576"), "{e}");
    let small = ServerConfig {
        apply_bytes_max: server::APPLY_BYTES_MAX_MIN,
        ..ServerConfig::default()
    };
    assert_eq!(small.check_apply_bytes(4096), Ok(()));
    assert!(small.check_apply_bytes(4097).is_err());
}

#[test]
fn resource_counts_at_their_limits_are_accepted_and_one_more_is_refused_naming_the_setting() {
    use server::ResourceCounts;
    let config = ServerConfig {
        streams_max: 3,
        partitions_max: 10,
        pipelines_max: 2,
        tokens_max: 2,
        ..ServerConfig::default()
    };
    let none = ResourceCounts::default();
    let at = ResourceCounts {
        streams: 3,
        partitions: 10,
        pipelines: 2,
        pipeline_runs: 10,
        tokens: 2,
    };
    assert_eq!(config.check_resource_counts(none, at), Ok(()));
    let cases = [
        (
            ResourceCounts { streams: 4, ..at },
            "the server would hold 4 streams; streamsMax is 3",
        ),
        (
            ResourceCounts {
                partitions: 11,
                ..at
            },
            "the server would hold 11 stream partitions in all; partitionsMax is 10",
        ),
        (
            ResourceCounts { pipelines: 3, ..at },
            "the server would hold 3 pipelines; pipelinesMax is 2",
        ),
        (
            ResourceCounts {
                pipeline_runs: 11,
                ..at
            },
            "the server would hold 11 pipeline runs in all (one per pipeline and source partition); partitionsMax is 10",
        ),
        (
            ResourceCounts { tokens: 3, ..at },
            "the server would hold 3 tokens; tokensMax is 2",
        ),
    ];
    for (over, message) in cases {
        let e = config
            .check_resource_counts(none, over)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(message), "{e}");
        // A server already past a limit (it was lowered) may keep what it
        // has, and shrink, but not grow.
        assert_eq!(config.check_resource_counts(over, over), Ok(()));
        assert_eq!(config.check_resource_counts(over, at), Ok(()));
    }
}

#[test]
fn limit_settings_are_read_from_the_config_file_and_checked() {
    let (config, _) = parse_config_file(
        "applyBytesMax: 8192\nstreamsMax: 5\npartitionsMax: 40\npipelinesMax: 7\ntokensMax: 9\n",
    )
    .unwrap();
    assert_eq!(
        (
            config.apply_bytes_max,
            config.streams_max,
            config.partitions_max,
            config.pipelines_max,
            config.tokens_max
        ),
        (8192, 5, 40, 7, 9)
    );
    let (config, _) = parse_config_file("metaCompactEveryEntries: 3\n").unwrap();
    assert_eq!(config.meta_compact_every_entries, 3);
    let (defaults, _) = parse_config_file("").unwrap();
    assert_eq!(defaults.meta_compact_every_entries, 1_000);
    assert_eq!(defaults.meta_voters, 5);
    let (config, _) = parse_config_file("metaVoters: 3\n").unwrap();
    assert_eq!(config.meta_voters, 3);
    let defaults = ServerConfig::default();
    assert_eq!(
        (
            defaults.streams_max,
            defaults.partitions_max,
            defaults.pipelines_max
        ),
        (256, 1024, 64)
    );
    for (input, path) in [
        ("applyBytesMax: 4095\n", "applyBytesMax"),
        ("applyBytesMax: 16777217\n", "applyBytesMax"),
        ("streamsMax: 0\n", "streamsMax"),
        ("partitionsMax: 0\n", "partitionsMax"),
        ("pipelinesMax: 1048577\n", "pipelinesMax"),
        ("tokensMax: 0\n", "tokensMax"),
        ("tokensMax: 65537\n", "tokensMax"),
        ("metaCompactEveryEntries: 0\n", "metaCompactEveryEntries"),
        ("metaVoters: 0\n", "metaVoters"),
        ("metaVoters: 8\n", "metaVoters"),
        (
            "metaCompactEveryEntries: 1000001\n",
            "metaCompactEveryEntries",
        ),
    ] {
        let e = parse_config_file(input).unwrap_err();
        assert_eq!(e.path, path, "{e}");
    }
}

#[test]
fn anchors_and_aliases_are_refused_with_their_position() {
    let (reason, at) = refused(&format!("{STREAM_DOC}---\nkind: &k Stream\n"));
    assert!(
        reason.starts_with("YAML anchors (`&name`) are not accepted"),
        "{reason}"
    );
    assert_eq!(at, Location { line: 7, column: 7 });
    let (reason, at) = refused("a: [1, *x]\n");
    assert!(
        reason.starts_with("YAML aliases (`*name`) are not accepted"),
        "{reason}"
    );
    assert_eq!(at, Location { line: 1, column: 8 });
    let e = parse_documents(&format!("{STREAM_DOC}---\n- *x\n")).unwrap_err();
    assert_eq!(e.document, Some(2), "{e}");
    assert!(e.to_string().contains("(line 7, column 3)"), "{e}");
    // The same in a config file, and a merge key.
    assert!(matches!(
        parse_config_file("dataDir: &d /tmp\n").unwrap_err().problem,
        Problem::YamlRefused { .. }
    ));
    refused("base: &b {partitions: 2}\nspec:\n  <<: *b\n");
}

#[test]
fn stars_and_ampersands_in_text_are_not_taken_for_aliases() {
    for text in [
        "a: 'it''s *not* an &alias'\n",
        "a: \"*x \\\" &y\"\n",
        "a: b # *comment &x\n# *whole line\n",
        "a: x*y&z\nb: x *y &z\n",
        "a: [x*y, \"*z\", '&w']\n",
        "a: |\n  *block\n  &scalar\nb: >-\n  - *folded\n",
        "a: plain\n  continued *line &here\n",
        "a: !tag x\n",
        "{\"a\": [\"*x\", {\"b\": \"&y\"}]}\n",
    ] {
        assert_eq!(yaml::check_shape(text), Ok(()), "{text}");
    }
    // A trigger with `*` is quoted, as YAML requires.
    let input = SEED_PIPELINE.replace("    - service.created", "    - \"service.*\"");
    assert_eq!(only_pipeline(&input).triggers, vec!["service.*".to_owned()]);
}

#[test]
fn flow_nesting_at_the_limit_is_read_and_one_more_is_refused() {
    let max = yaml::YAML_DEPTH_MAX;
    assert_eq!(max, 32);
    let nested = |depth: usize| format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(yaml::check_shape(&nested(max)), Ok(()));
    // At the limit the document reaches the schema check (it is no Stream).
    let e = parse_documents(&nested(max)).unwrap_err();
    assert!(!matches!(e.problem, Problem::YamlRefused { .. }), "{e}");
    let (reason, at) = refused(&nested(max + 1));
    assert!(reason.contains("deeper than 32 levels"), "{reason}");
    assert_eq!(
        at,
        Location {
            line: 1,
            column: 4 + 32
        }
    );
    // Mappings count too; brackets in quotes and comments do not.
    refused(&format!("a: {}\n", "{b: ".repeat(max + 1)));
    let quoted = format!("a: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100));
    assert_eq!(yaml::check_shape(&quoted), Ok(()));
}

#[test]
fn nesting_and_alias_bombs_are_refused_before_the_yaml_parser_reads_them() {
    let started = std::time::Instant::now();
    // 100,000 `[` stalled a shard for 36 s; 30,000 `{a: ` took libyaml 2.2 s.
    refused(&"[".repeat(100_000));
    refused(&"{a: ".repeat(100_000));
    // A few KB of aliases expanded to over 1 GB.
    let mut bomb = String::from("a: &a [");
    bomb.push_str(&vec!["xxxxxxxx"; 1000].join(","));
    bomb.push_str("]\nb: &b [");
    bomb.push_str(&vec!["*a"; 1000].join(","));
    bomb.push_str("]\nc: [");
    bomb.push_str(&vec!["*b"; 1000].join(","));
    bomb.push_str("]\n");
    let (reason, at) = refused(&bomb);
    assert!(reason.contains("anchors"), "{reason}");
    assert_eq!(at.line, 1);
    // Block nesting is linear for libyaml, and serde_yaml stops at 128.
    let e = parse_documents(&format!("{}x\n", "- ".repeat(200_000))).unwrap_err();
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn an_alias_the_shape_check_misses_still_cannot_expand() {
    // The line after `abc` continues its plain scalar for YAML (it is
    // indented more than `k`), but the scan takes its quote for a quoted
    // string and misses the anchor and aliases after it: the node budget
    // of the first reading stops the expansion.
    let mut input = String::from("k:\n  abc\n  'x\nd: &c [");
    input.push_str(&vec!["1"; 100].join(","));
    input.push_str("]\ne: [");
    input.push_str(&vec!["*c"; 100].join(","));
    input.push_str("]\n");
    assert_eq!(yaml::check_shape(&input), Ok(()), "the scan is fooled");
    let e = parse_documents(&input).unwrap_err();
    assert!(
        e.to_string()
            .contains("expands to more nodes than its length allows"),
        "{e}"
    );
    assert!(yaml::nodes_max(input.len()) < 100 * 100);
}

#[test]
fn the_largest_allowed_apply_parses_quickly() {
    // 1 MiB of streams and pipelines, about what `applyBytesMax` allows.
    let mut input = String::new();
    let mut n = 0;
    while input.len() < (1 << 20) - 2048 {
        input.push_str(&format!(
            "---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: s{n} }}\nspec: {{ partitions: 4, retention: {{ maxAgeMs: 60000 }} }}\n"
        ));
        input.push_str("---\n");
        input.push_str(&pipeline_doc(
            &format!("p{n}"),
            &format!(
                "  sourceStream: s{n}\n  triggers: [\"a.*\", b.c]\n  stages:\n    - name: one\n    - name: two\n      dependencies: [one]\n      retry: {{ maxAttempts: 3 }}\n"
            ),
        ));
        n += 1;
    }
    assert!(input.len() <= 1 << 20);
    let started = std::time::Instant::now();
    let resources = parse_documents(&input).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resources.len(), 2 * n);
    eprintln!(
        "parsed {} bytes ({} resources) in {elapsed:?}",
        input.len(),
        resources.len()
    );
    // Generous for a debug build on a loaded machine; the release figure
    // is in the module header of `yaml.rs`.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}
