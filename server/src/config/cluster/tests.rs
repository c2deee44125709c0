//! `cluster:` and `replicas:` rules, each with the field its error names.

use super::*;
use crate::config::{FsyncPolicy, ServerConfig, StreamSpec, parse_config_file};

fn three() -> ClusterConfig {
    ClusterConfig {
        node_id: 2,
        peers: (1..=3)
            .map(|id| PeerSpec {
                id,
                address: format!("10.0.0.{id}:7000"),
                peer_address: None,
            })
            .collect(),
        secret_file: None,
        peer_ca: None,
        founders: None,
        secret: ClusterSecret::default(),
        registry: Default::default(),
    }
}

/// The paths of every error, in order.
fn paths(c: &ClusterConfig) -> Vec<String> {
    c.errors().into_iter().map(|e| e.path).collect()
}

#[test]
fn a_three_node_cluster_from_yaml_is_valid_and_names_its_node() {
    let yaml = "listen: 0.0.0.0:7000\ncluster:\n  nodeId: 2\n  peers:\n    - { id: 1, address: \"10.0.0.1:7000\" }\n    - { id: 2, address: \"10.0.0.2:7000\" }\n    - { id: 3, address: \"node3.example:7000\" }\n";
    let (config, _) = parse_config_file(yaml).unwrap();
    let cluster = config.cluster.as_ref().unwrap();
    assert_eq!(config.node_id(), 2);
    assert_eq!(config.cluster_nodes(), 3);
    assert_eq!(cluster.peers[2].address, "node3.example:7000");
    assert_eq!(ServerConfig::default().node_id(), NODE_ID_SINGLE);
    assert_eq!(ServerConfig::default().cluster_nodes(), 1);
}

#[test]
fn node_ids_must_be_unique_and_nonzero() {
    let mut c = three();
    c.peers[2].id = 1;
    assert_eq!(paths(&c), ["cluster.peers[2].id"]);
    assert!(
        c.errors()[0]
            .to_string()
            .contains("node id 1 is also peers[0]'s")
    );
    let mut c = three();
    c.peers[0].id = 0;
    assert_eq!(paths(&c), ["cluster.peers[0].id"]);
    let mut c = three();
    c.node_id = 0;
    assert_eq!(paths(&c), ["cluster.nodeId"]);
}

#[test]
fn own_node_id_must_be_among_the_peers() {
    let mut c = three();
    c.node_id = 4;
    let errors = c.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "cluster.nodeId");
    assert!(
        errors[0]
            .to_string()
            .contains("node 4 is not among cluster.peers"),
        "{}",
        errors[0]
    );
}

#[test]
fn peer_addresses_must_be_distinct_and_host_port() {
    let mut c = three();
    c.peers[1].address = "10.0.0.1:7000".into();
    assert_eq!(paths(&c), ["cluster.peers[1].address"]);
    for bad in [
        "10.0.0.2",
        ":7000",
        "10.0.0.2:0",
        "10.0.0.2:70000",
        "10.0.0.2:x",
        "a b:7000",
        "::1:7000",
        "[]:7000",
        "[::1:7000",
    ] {
        let mut c = three();
        c.peers[1].address = bad.into();
        assert_eq!(paths(&c), ["cluster.peers[1].address"], "{bad}");
    }
    let mut c = three();
    c.peers[1].address = "x".repeat(PEER_ADDRESS_BYTES_MAX) + ":7000";
    assert_eq!(paths(&c), ["cluster.peers[1].address"]);
    for good in ["[::1]:7001", "localhost:7002", "node-2.example.org:7000"] {
        let mut c = three();
        c.peers[1].address = good.into();
        assert!(c.errors().is_empty(), "{good}: {:?}", c.errors());
    }
}

#[test]
fn at_most_cluster_nodes_max_peers_and_at_least_one() {
    let mut c = three();
    c.node_id = 1;
    c.peers = (1..=CLUSTER_NODES_MAX as u64 + 1)
        .map(|id| PeerSpec {
            id,
            address: format!("10.0.{}.{}:7000", id / 256, id % 256),
            peer_address: None,
        })
        .collect();
    assert_eq!(paths(&c), ["cluster.peers"]);
    c.peers.pop();
    assert!(c.errors().is_empty(), "{:?}", c.errors());
    c.peers.clear();
    assert_eq!(paths(&c), ["cluster.peers", "cluster.nodeId"]);
}

#[test]
fn errors_name_the_server_config_and_unknown_fields_are_refused() {
    let yaml = "cluster:\n  nodeId: 5\n  peers:\n    - { id: 1, address: \"10.0.0.1:7000\" }\n";
    let e = parse_config_file(yaml).unwrap_err();
    assert_eq!(e.path, "cluster.nodeId");
    assert!(e.to_string().contains("ServerConfig"), "{e}");
    let yaml = "cluster:\n  nodeId: 1\n  peers: []\n  extra: 1\n";
    assert!(parse_config_file(yaml).is_err());
}

#[test]
fn peer_addresses_default_to_the_client_port_plus_100_and_can_be_set() {
    let mut c = three();
    assert_eq!(c.peers[0].peer_address().unwrap(), "10.0.0.1:7100");
    c.peers[1].peer_address = Some("10.9.9.9:9000".into());
    assert_eq!(c.peers[1].peer_address().unwrap(), "10.9.9.9:9000");
    assert!(c.errors().is_empty());
    c.peers[2].peer_address = Some("nowhere".into());
    assert_eq!(paths(&c), ["cluster.peers[2].peerAddress"]);
    let high = PeerSpec {
        id: 1,
        address: "h:65500".into(),
        peer_address: None,
    };
    assert!(high.peer_address().unwrap_err().contains("set peerAddress"));
}

#[test]
fn placement_is_the_same_everywhere_and_spreads_partitions_and_leaders() {
    let c = three();
    let mut leaders = [0usize; 4];
    for p in 0..30 {
        let nodes = c.placement("events", p, 3);
        let mut sorted = nodes.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3], "partition {p}: {nodes:?}");
        // Consecutive in id order from the preferred leader.
        assert_eq!(nodes[1], nodes[0] % 3 + 1);
        leaders[nodes[0] as usize] += 1;
        // Fewer replicas: a prefix of the same order.
        assert_eq!(c.placement("events", p, 2), nodes[..2]);
        // Another node's config (same peers) places the same way.
        let mut other = three();
        other.node_id = 3;
        other.peers.reverse();
        assert_eq!(other.placement("events", p, 3), nodes);
    }
    assert!(leaders[1..].iter().all(|&n| n >= 3), "{leaders:?}");
}

#[test]
fn replicas_default_is_one_below_three_nodes_and_three_from_three() {
    assert_eq!(replicas_default(1), 1);
    assert_eq!(replicas_default(2), 1);
    assert_eq!(replicas_default(3), 3);
    assert_eq!(replicas_default(7), 3);
}

fn stream(replicas: Option<u32>) -> StreamSpec {
    StreamSpec {
        replicas,
        ..StreamSpec::with_defaults("orders")
    }
}

#[test]
fn replicas_are_at_most_the_node_count_and_replicas_max() {
    let single = ServerConfig::default();
    assert_eq!(single.check_stream_replicas(&stream(None)), Ok(()));
    assert_eq!(single.check_stream_replicas(&stream(Some(1))), Ok(()));
    let e = single.check_stream_replicas(&stream(Some(2))).unwrap_err();
    assert_eq!(e.path, "spec.replicas");
    assert!(
        e.to_string()
            .starts_with("Stream \"orders\": spec.replicas"),
        "{e}"
    );
    assert!(e.to_string().contains("allowed 1 to 1"), "{e}");
    let e = single.check_stream_replicas(&stream(Some(0))).unwrap_err();
    assert_eq!(e.path, "spec.replicas");
    let clustered = ServerConfig {
        cluster: Some(three()),
        ..ServerConfig::default()
    };
    assert_eq!(clustered.check_stream_replicas(&stream(Some(3))), Ok(()));
    let e = clustered
        .check_stream_replicas(&stream(Some(4)))
        .unwrap_err();
    assert!(e.to_string().contains("allowed 1 to 3"), "{e}");
    let mut big = three();
    big.peers = (1..=7)
        .map(|id| PeerSpec {
            id,
            address: format!("10.0.0.{id}:7000"),
            peer_address: None,
        })
        .collect();
    let seven = ServerConfig {
        cluster: Some(big),
        ..ServerConfig::default()
    };
    assert_eq!(
        seven.check_stream_replicas(&stream(Some(REPLICAS_MAX))),
        Ok(())
    );
    let e = seven
        .check_stream_replicas(&stream(Some(REPLICAS_MAX + 1)))
        .unwrap_err();
    assert!(e.to_string().contains("allowed 1 to 5"), "{e}");
}

#[test]
fn replicas_above_one_need_fsync_always() {
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval { interval_ms: 100 },
    ] {
        let config = ServerConfig {
            cluster: Some(three()),
            fsync,
            ..ServerConfig::default()
        };
        let e = config.check_stream_replicas(&stream(Some(3))).unwrap_err();
        assert_eq!(e.path, "spec.replicas");
        assert!(e.to_string().contains("fsync: always"), "{e}");
        assert_eq!(config.check_stream_replicas(&stream(Some(1))), Ok(()));
    }
}

#[test]
fn stream_replicas_parse_and_persist_only_when_set() {
    let yaml = "{}\n---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: orders }\nspec: { replicas: 3 }\n";
    let (_, resources) = parse_config_file(yaml).unwrap();
    let crate::config::Resource::Stream(s) = &resources[0] else {
        panic!("not a stream: {resources:?}")
    };
    assert_eq!(s.replicas, Some(3));
    let plain = crate::config::to_yaml(&crate::config::Resource::Stream(
        StreamSpec::with_defaults("orders"),
    ))
    .unwrap();
    assert!(!plain.contains("replicas"), "{plain}");
}

#[test]
fn a_cluster_beyond_loopback_needs_a_secret_of_16_bytes_or_more() {
    let mut c = three();
    let e = c.load_secret().unwrap_err();
    assert!(
        e.contains("beyond loopback") && e.contains("cluster.secretFile"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "short\n").unwrap();
    c.secret_file = Some(path.clone());
    assert!(c.load_secret().unwrap_err().contains("at least 16"));
    std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
    c.load_secret().unwrap();
    assert_eq!(c.secret.0, b"0123456789abcdef0123");
    assert_eq!(format!("{:?}", c.secret), "ClusterSecret(..)");
    c.secret_file = Some(dir.path().join("missing"));
    assert!(c.load_secret().unwrap_err().contains("missing"));
    // All on loopback: no secret needed.
    let mut local = three();
    for p in &mut local.peers {
        p.address = format!("127.0.0.1:70{}0", p.id);
    }
    local.load_secret().unwrap();
    assert!(local.secret.0.is_empty());
}

#[test]
fn a_data_dir_keeps_the_node_id_and_founders_it_was_created_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut c = three();
    // Fresh: recorded; the same again: fine.
    check_members(data, Some(&mut c)).unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join(MEMBERS_FILE)).unwrap(),
        "node 2\npeers 1,2,3\n"
    );
    assert_eq!(c.founders, Some(vec![1, 2, 3]));
    check_members(data, Some(&mut three())).unwrap();
    // Addresses may change; the ids may not.
    let mut moved = three();
    moved.peers[0].address = "10.9.9.9:7000".into();
    check_members(data, Some(&mut moved)).unwrap();
    // A node added since may be configured: the founders stay recorded,
    // and placement hashes over them only.
    let mut four = three();
    four.peers.push(four_spec());
    let before = three().placement("orders", 5, 3);
    check_members(data, Some(&mut four)).unwrap();
    assert_eq!(four.founders, Some(vec![1, 2, 3]));
    assert_eq!(four.placement("orders", 5, 3), before);
    assert_eq!(four.peer(4).map(|p| p.id), Some(4));
    // Other founders said: refused, naming both.
    let mut wrong = three();
    wrong.founders = Some(vec![1, 2]);
    let e = check_members(data, Some(&mut wrong)).unwrap_err();
    assert!(
        e.contains("founded by nodes [1, 2, 3]") && e.contains("cluster.founders says [1, 2]"),
        "{e}"
    );
    let mut other = three();
    other.node_id = 3;
    let e = check_members(data, Some(&mut other)).unwrap_err();
    assert!(e.contains("makes it node 3"), "{e}");
    // Without a cluster: refused too.
    assert!(
        check_members(data, None)
            .unwrap_err()
            .contains("does not leave its cluster")
    );
    // A single server's data dir records nothing, and does not join one.
    let single = tempfile::tempdir().unwrap();
    check_members(single.path(), None).unwrap();
    assert!(!single.path().join(MEMBERS_FILE).exists());
    std::fs::write(single.path().join("resources.yaml"), "").unwrap();
    let e = check_members(single.path(), Some(&mut three())).unwrap_err();
    assert!(e.contains("cannot join a cluster"), "{e}");
    // A damaged file is named.
    std::fs::write(data.join(MEMBERS_FILE), "garbage").unwrap();
    assert!(
        check_members(data, Some(&mut three()))
            .unwrap_err()
            .contains(MEMBERS_FILE)
    );
}

fn four_spec() -> PeerSpec {
    PeerSpec {
        id: 4,
        address: "10.0.0.4:7000".into(),
        peer_address: None,
    }
}

#[test]
fn a_joining_node_records_the_founders_it_is_told_and_places_as_they_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut joining = three();
    joining.node_id = 4;
    joining.peers.push(four_spec());
    joining.founders = Some(vec![3, 1, 2]);
    assert!(joining.errors().is_empty(), "{:?}", joining.errors());
    check_members(dir.path(), Some(&mut joining)).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(MEMBERS_FILE)).unwrap(),
        "node 4\npeers 1,2,3\n"
    );
    for partition in 0..16 {
        assert_eq!(
            joining.placement("orders", partition, 3),
            three().placement("orders", partition, 3)
        );
    }
}

#[test]
fn founders_must_be_distinct_peers() {
    let mut c = three();
    c.founders = Some(vec![1, 1, 9]);
    assert_eq!(paths(&c), ["cluster.founders[1]", "cluster.founders[2]"]);
    c.founders = Some(vec![]);
    assert_eq!(paths(&c), ["cluster.founders"]);
    let yaml = "listen: 0.0.0.0:7000\ncluster:\n  nodeId: 4\n  founders: [1, 2, 3]\n  peers:\n    - { id: 1, address: \"10.0.0.1:7000\" }\n    - { id: 2, address: \"10.0.0.2:7000\" }\n    - { id: 3, address: \"10.0.0.3:7000\" }\n    - { id: 4, address: \"10.0.0.4:7000\" }\n";
    let (config, _) = parse_config_file(yaml).unwrap();
    assert_eq!(config.cluster.unwrap().founders, Some(vec![1, 2, 3]));
}

/// Every node's `NotLeader` hints and Metadata answers name a node by its
/// `cluster.peers` address: a node known by a non-loopback one but
/// listening on loopback (the default `listen`) is unreachable to clients
/// on other hosts, so it does not start.
#[test]
fn a_node_known_beyond_loopback_must_listen_beyond_it() {
    let peers = "cluster:\n  nodeId: 2\n  peers:\n    - { id: 1, address: \"10.0.0.1:7000\" }\n    - { id: 2, address: \"10.0.0.2:7100\" }\n";
    let check = |yaml: &str| parse_config_file(yaml).unwrap().0.check_cluster_listen();
    let e = check(peers).unwrap_err();
    assert_eq!(e.path, "listen");
    let text = e.to_string();
    assert!(
        text.contains("names this node (id 2) at 10.0.0.2:7100")
            && text.contains("127.0.0.1:7000 (loopback)")
            && text.contains("listen: 0.0.0.0:7100"),
        "{text}"
    );
    for listen in ["0.0.0.0:7100", "10.0.0.2:7100"] {
        let yaml = format!("listen: {listen}\n{peers}");
        assert_eq!(check(&yaml), Ok(()), "{listen}");
    }
    // A node known by a loopback address may listen there.
    let local = "cluster:\n  nodeId: 1\n  peers:\n    - { id: 1, address: \"localhost:7000\" }\n    - { id: 2, address: \"10.0.0.2:7000\" }\n";
    assert_eq!(check(local), Ok(()));
}

/// A stream's default replicas count the founders, which every node
/// records alike: a node added later whose `peers` list names 4 nodes
/// takes the default of a 2-node cluster's founders, as nodes 1 and 2
/// (whose lists name 2) do, and not 3.
#[test]
fn the_default_replicas_count_the_founders_not_this_nodes_peers() {
    let mut fourth = three();
    fourth.node_id = 3;
    fourth.founders = Some(vec![1, 2]);
    let config = |cluster: ClusterConfig| ServerConfig {
        fsync: FsyncPolicy::Always,
        cluster: Some(cluster),
        ..ServerConfig::default()
    };
    assert_eq!(config(fourth.clone()).stream_replicas(&stream(None)), 1);
    let mut founders_two = three();
    founders_two.peers.truncate(2);
    assert_eq!(config(founders_two).stream_replicas(&stream(None)), 1);
    // Three founders: 3, and an explicit value stands.
    assert_eq!(config(three()).stream_replicas(&stream(None)), 3);
    assert_eq!(config(fourth).stream_replicas(&stream(Some(2))), 2);
}
