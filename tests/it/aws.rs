//! The AWS emulator's own view (LocalStack on 127.0.0.1:4566, read with aws-sdk-ec2), and a
//! recording TCP relay that shows which EC2 actions labctl sent on the wire.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::Filter;

pub const LOCALSTACK: &str = "127.0.0.1:4566";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub fn ec2<T>(f: impl AsyncFnOnce(&Client) -> T) -> T {
    rt().block_on(async {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-2"))
            .endpoint_url(format!("http://{LOCALSTACK}"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build();
        f(&Client::from_conf(conf)).await
    })
}

fn owner_filter(owner: &str) -> Filter {
    Filter::builder().name("tag:labctl.owner").values(owner).build()
}

/// (id, state) of this owner's instances, terminated ones included.
pub fn instances_of(owner: &str) -> Vec<(String, String)> {
    ec2(async |c| {
        let out = c.describe_instances().filters(owner_filter(owner)).send().await.unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                (i.instance_id().unwrap_or_default().to_string(), state)
            })
            .collect()
    })
}

pub fn live_instances_of(owner: &str) -> Vec<String> {
    instances_of(owner).into_iter().filter(|(_, s)| s != "terminated").map(|(id, _)| id).collect()
}

/// (group id, ingress rules as "tcp 80 0.0.0.0/0") of this owner's security groups.
pub fn security_groups_of(owner: &str) -> Vec<(String, Vec<String>)> {
    ec2(async |c| {
        let out = c.describe_security_groups().filters(owner_filter(owner)).send().await.unwrap();
        out.security_groups()
            .iter()
            .map(|g| {
                let rules = g
                    .ip_permissions()
                    .iter()
                    .flat_map(|p| {
                        p.ip_ranges().iter().map(move |r| {
                            format!(
                                "{} {} {}",
                                p.ip_protocol().unwrap_or_default(),
                                p.from_port().unwrap_or(-1),
                                r.cidr_ip().unwrap_or_default()
                            )
                        })
                    })
                    .collect();
                (g.group_id().unwrap_or_default().to_string(), rules)
            })
            .collect()
    })
}

pub fn key_pairs_of(owner: &str) -> Vec<String> {
    ec2(async |c| {
        let out = c.describe_key_pairs().filters(owner_filter(owner)).send().await.unwrap();
        out.key_pairs().iter().filter_map(|k| k.key_name().map(String::from)).collect()
    })
}

pub fn user_data_of(instance: &str) -> String {
    use base64::Engine;
    ec2(async |c| {
        let out = c
            .describe_instance_attribute()
            .instance_id(instance)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let b64 = out.user_data().and_then(|v| v.value()).unwrap_or_default().to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    })
}

pub fn revoke(group: &str, port: i32, cidr: &str) {
    ec2(async |c| {
        c.revoke_security_group_ingress()
            .group_id(group)
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .cidr_ip(cidr)
            .send()
            .await
            .unwrap();
    })
}

/// A relay on 127.0.0.1 in front of LocalStack that keeps every byte labctl sends, so a test
/// can list the EC2 `Action=` names that went over the wire.
pub struct Relay {
    pub port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    /// When set, answers stop flowing back to labctl once a request with this action went out.
    hold: Arc<Mutex<Option<(String, bool)>>>,
}

impl Relay {
    pub fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let hold: Arc<Mutex<Option<(String, bool)>>> = Arc::new(Mutex::new(None));
        let log = sent.clone();
        let holding = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(upstream) = TcpStream::connect(LOCALSTACK) else { continue };
                let (log, hold_in, hold_out) = (log.clone(), holding.clone(), holding.clone());
                let (mut c_read, mut u_write) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        // Trip the hold before the request leaves: its answer must not overtake it.
                        if let Some((action, tripped)) = hold_in.lock().unwrap().as_mut() {
                            *tripped |= String::from_utf8_lossy(&buf[..n]).contains(&format!("Action={action}&"));
                        }
                        if u_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = u_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut u_read, mut c_write) = (upstream, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = u_read.read(&mut buf) {
                        while hold_out.lock().unwrap().as_ref().is_some_and(|(_, tripped)| *tripped) {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay { port, sent, hold }
    }

    /// From now on, once a request with `action` has gone out, no answer reaches labctl until
    /// `release`: the call is made, the caller never hears back.
    pub fn hold_after(&self, action: &str) {
        *self.hold.lock().unwrap() = Some((action.to_string(), false));
    }

    pub fn held(&self) -> bool {
        self.hold.lock().unwrap().as_ref().is_some_and(|(_, tripped)| *tripped)
    }

    pub fn release(&self) {
        *self.hold.lock().unwrap() = None;
    }

    /// EC2 actions sent so far, in order.
    pub fn actions(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned();
        text.split("Action=")
            .skip(1)
            .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect())
            .collect()
    }

    pub fn clear(&self) {
        self.sent.lock().unwrap().clear();
    }

    /// A labctl config file with a profile `relay` that talks to LocalStack through this relay.
    pub fn config(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("relay-config.yaml");
        let text = format!(
            "profiles:\n  relay:\n    aws: {{ endpoint_url: \"http://127.0.0.1:{}\", region: us-east-2, emulator: true }}\n",
            self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Actions that change something.
pub fn mutating(actions: &[String]) -> Vec<String> {
    const READ_ONLY: [&str; 2] = ["Describe", "Get"];
    actions.iter().filter(|a| !READ_ONLY.iter().any(|p| a.starts_with(p))).cloned().collect()
}
