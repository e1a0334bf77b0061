//! The redactor's corpus: secret forms that must be redacted, and ordinary commands that must stay as they are.

use super::*;

fn r() -> &'static Redactor {
    Redactor::builtin()
}

/// Secret forms and what must remain of them: `[redacted]` stands where the secret was.
const REDACTED_CORPUS: &[(&str, &str)] = &[
    // The forms the audit missed.
    (
        "curl -u admin:hunter2 https://api.example.com/x",
        "curl -u admin:[redacted] https://api.example.com/x",
    ),
    (
        "curl -s --user 'deploy:S3cr3t!' https://x",
        "curl -s --user 'deploy:[redacted]' https://x",
    ),
    (
        "curl -uadmin:hunter2 https://x",
        "curl -uadmin:[redacted] https://x",
    ),
    (
        "curl --proxy-user bob:pr0xy https://x",
        "curl --proxy-user bob:[redacted] https://x",
    ),
    (
        "DB_PASS=hunter2 ./migrate.sh",
        "DB_PASS=[redacted] ./migrate.sh",
    ),
    (
        "DB_PASS='two words' ./migrate.sh",
        "DB_PASS='[redacted]' ./migrate.sh",
    ),
    (
        "redis-cli -h cache -a hunter2 ping",
        "redis-cli -h cache -a [redacted] ping",
    ),
    (
        "redis-cli -h cache AUTH default hunter2",
        "redis-cli -h cache AUTH [redacted]",
    ),
    (
        "redis-cli --pass hunter2 info",
        "redis-cli --pass [redacted] info",
    ),
    (
        "docker login -u ci -p hunter2 registry.example.com",
        "docker login -u ci -p [redacted] registry.example.com",
    ),
    (
        "podman login --username ci --password hunter2 quay.io",
        "podman login --username ci --password [redacted] quay.io",
    ),
    (
        "openssl rsa -in key.pem -passin pass:hunter2 -out plain.pem",
        "openssl rsa -in key.pem -passin pass:[redacted] -out plain.pem",
    ),
    (
        "openssl pkcs12 -export -passout pass:'p w' -out x.p12",
        "openssl pkcs12 -export -passout pass:'[redacted]' -out x.p12",
    ),
    (
        "openssl enc -aes-256-cbc -k hunter2 -in a -out b",
        "openssl enc -aes-256-cbc -k [redacted] -in a -out b",
    ),
    ("openssl passwd -6 hunter2", "openssl passwd [redacted]"),
    (
        "echo hunter2 | sudo -S apt-get update",
        "echo [redacted] | sudo -S apt-get update",
    ),
    (
        "echo 'hunter2' | sudo -kS systemctl restart nginx",
        "echo '[redacted]' | sudo -kS systemctl restart nginx",
    ),
    (
        "printf '%s\\n' hunter2 | sudo --stdin true",
        "printf [redacted] | sudo --stdin true",
    ),
    (
        "sudo -S whoami <<< hunter2",
        "sudo -S whoami <<< [redacted]",
    ),
    (
        "echo 'bob:hunter2' | chpasswd",
        "echo '[redacted]' | chpasswd",
    ),
    (
        "echo hunter2 | docker login -u ci --password-stdin ghcr.io",
        "echo [redacted] | docker login -u ci --password-stdin ghcr.io",
    ),
    (
        "htpasswd -b /etc/nginx/.htpasswd alice hunter2",
        "htpasswd -b /etc/nginx/.htpasswd alice [redacted]",
    ),
    (
        "htpasswd -cbB -C 12 users.db alice 'hunter 2'",
        "htpasswd -cbB -C 12 users.db alice '[redacted]'",
    ),
    (
        "htpasswd -nb alice hunter2",
        "htpasswd -nb alice [redacted]",
    ),
    // Password options of common clients.
    (
        "mysql -u root --password=hunter2 shop",
        "mysql -u root --password=[redacted] shop",
    ),
    (
        "mysql -u root -phunter2 shop",
        "mysql -u root -p[redacted] shop",
    ),
    (
        "mysqldump -uroot -p'hunter2' --all-databases",
        "mysqldump -uroot -p'[redacted]' --all-databases",
    ),
    (
        "mariadb -h db -P 3306 -phunter2",
        "mariadb -h db -P 3306 -p[redacted]",
    ),
    (
        "psql postgres://app:hunter2@db.internal:5432/shop",
        "psql postgres://app:[redacted]@db.internal:5432/shop",
    ),
    (
        "psql 'postgresql://app:hunter2@db/shop?sslmode=require'",
        "psql 'postgresql://app:[redacted]@db/shop?sslmode=require'",
    ),
    (
        "PGPASSWORD=hunter2 psql -h db",
        "PGPASSWORD=[redacted] psql -h db",
    ),
    ("MYSQL_PWD=hunter2 mysql", "MYSQL_PWD=[redacted] mysql"),
    (
        "mongosh -u admin -p hunter2 --authenticationDatabase admin",
        "mongosh -u admin -p [redacted] --authenticationDatabase admin",
    ),
    (
        "sqlcmd -S db -U sa -P hunter2 -Q 'select 1'",
        "sqlcmd -S db -U sa -P [redacted] -Q 'select 1'",
    ),
    (
        "ldapsearch -x -D cn=admin,dc=x -w hunter2 -b dc=x",
        "ldapsearch -x -D cn=admin,dc=x -w [redacted] -b dc=x",
    ),
    (
        "smbclient //fs/share -U alice%hunter2",
        "smbclient //fs/share -U alice%[redacted]",
    ),
    (
        "sshpass -p hunter2 ssh deploy@web-1",
        "sshpass -p [redacted] ssh deploy@web-1",
    ),
    (
        "sshpass -p'hunter2' scp a b:",
        "sshpass -p'[redacted]' scp a b:",
    ),
    (
        "zip -P hunter2 backup.zip data.db",
        "zip -P [redacted] backup.zip data.db",
    ),
    ("7z a -phunter2 x.7z dir", "7z a -p[redacted] x.7z dir"),
    (
        "keytool -list -keystore ks.jks -storepass changeit",
        "keytool -list -keystore ks.jks -storepass [redacted]",
    ),
    ("useradd -m -p hunter2 bob", "useradd -m -p [redacted] bob"),
    (
        "wget --user=bob --password=hunter2 https://x/f",
        "wget --user=bob --password=[redacted] https://x/f",
    ),
    (
        "http -a bob:hunter2 GET https://api/x",
        "http -a bob:[redacted] GET https://api/x",
    ),
    // Headers and bearer credentials.
    (
        r#"curl -H "Authorization: Bearer abcdef123456" https://x"#,
        r#"curl -H "Authorization: Bearer [redacted]" https://x"#,
    ),
    (
        "curl -H 'Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l' https://x",
        "curl -H 'Authorization: Basic [redacted]' https://x",
    ),
    (
        "curl -H 'authorization: token ghx9f8e7d6' https://x",
        "curl -H 'authorization: token [redacted]' https://x",
    ),
    (
        "curl -H 'X-Api-Key: k3y-v4lue' https://x",
        "curl -H 'X-Api-Key: [redacted]' https://x",
    ),
    (
        "curl -H 'Private-Token: abc123' https://gitlab/x",
        "curl -H 'Private-Token: [redacted]' https://gitlab/x",
    ),
    (
        "curl -H 'Cookie: session=abc; csrftoken=def' https://x",
        "curl -H 'Cookie: [redacted]' https://x",
    ),
    (
        "curl -b 'session=abc123' https://x",
        "curl -b '[redacted]' https://x",
    ),
    (
        r#"{"Authorization": "Bearer abcdef123456"}"#,
        r#"{"Authorization": "Bearer [redacted]"}"#,
    ),
    // Environment and assignments.
    (
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY aws s3 ls",
        "AWS_SECRET_ACCESS_KEY=[redacted] aws s3 ls",
    ),
    (
        "export TOKEN=hunter2; ./deploy",
        "export TOKEN=[redacted]; ./deploy",
    ),
    (
        "export GITHUB_TOKEN=\"abc\" && gh pr list",
        "export GITHUB_TOKEN=\"[redacted]\" && gh pr list",
    ),
    (
        "API_TOKEN=s3cr3t ./deploy.sh",
        "API_TOKEN=[redacted] ./deploy.sh",
    ),
    (
        "SECRET_KEY_BASE=abc rails s",
        "SECRET_KEY_BASE=[redacted] rails s",
    ),
    (
        "DB_PASSWORD=x RAILS_ENV=production rake",
        "DB_PASSWORD=[redacted] RAILS_ENV=production rake",
    ),
    (
        "docker run -e POSTGRES_PASSWORD=hunter2 postgres:16",
        "docker run -e POSTGRES_PASSWORD=[redacted] postgres:16",
    ),
    (
        "kubectl create secret generic db --from-literal=password=hunter2",
        "kubectl create secret generic db --from-literal=password=[redacted]",
    ),
    (
        "helm install x chart --set auth.password=hunter2,auth.user=app",
        "helm install x chart --set auth.password=[redacted]",
    ),
    (
        "mount -t cifs //fs/s /mnt -o username=bob,password=hunter2",
        "mount -t cifs //fs/s /mnt -o username=bob,password=[redacted]",
    ),
    (
        "aws configure set aws_secret_access_key hunter2",
        "aws configure set aws_secret_access_key [redacted]",
    ),
    (
        "STRIPE_KEY=abcd1234 node app.js",
        "STRIPE_KEY=[redacted] node app.js",
    ),
    // Options.
    ("login --token abc123def", "login --token [redacted]"),
    ("login --token=abc123def", "login --token=[redacted]"),
    ("tool --api-key abc123 run", "tool --api-key [redacted] run"),
    ("tool --api_key=abc123 run", "tool --api_key=[redacted] run"),
    (
        "tool --client-secret 'a b c' run",
        "tool --client-secret '[redacted]' run",
    ),
    (
        "gpg --batch --passphrase hunter2 -d f",
        "gpg --batch --passphrase [redacted] -d f",
    ),
    (
        "kubectl --token=abc123 get pods",
        "kubectl --token=[redacted] get pods",
    ),
    (
        "vault login hvs.CAESIJ0qEXAMPLEEXAMPLE1234",
        "vault login [redacted]",
    ),
    // URLs.
    (
        "git clone https://bob:pa55w0rd@git.example.com/r.git",
        "git clone https://bob:[redacted]@git.example.com/r.git",
    ),
    (
        "redis-cli -u redis://:hunter2@cache:6379",
        "redis-cli -u redis://:[redacted]@cache:6379",
    ),
    (
        "curl 'https://api.example.com/v1/x?access_token=abc123&page=2'",
        "curl 'https://api.example.com/v1/x?access_token=[redacted]&page=2'",
    ),
    (
        "curl 'https://b.blob.core.windows.net/c/f?sv=2022&sig=AbC%2Bdef123'",
        "curl 'https://b.blob.core.windows.net/c/f?sv=2022&sig=[redacted]'",
    ),
    // Well-known token formats.
    ("echo AKIAABCDEFGHIJKLMNOP", "echo [redacted]"),
    (
        "gh auth login --with-token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "gh auth login --with-token [redacted]",
    ),
    (
        "git push https://x:glpat-AbCdEfGhIjKlMnOpQrSt@gitlab.com/a/b",
        "git push https://x:[redacted]@gitlab.com/a/b",
    ),
    (
        "curl -d 'text=hi' https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "curl -d 'text=hi' https://hooks.slack.com/services/[redacted]",
    ),
    ("echo xoxb-1234567890-abcdefghij", "echo [redacted]"),
    (
        "node x.js sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "node x.js [redacted]",
    ),
    (
        "claude --key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv",
        "claude --key [redacted]",
    ),
    (
        "curl https://maps.googleapis.com/x?key=AIzaSyA1234567890abcdefghijklmnopqrstu",
        "curl https://maps.googleapis.com/x?key=[redacted]",
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "jwt [redacted]",
    ),
    // Private keys.
    (
        "echo '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----' > k",
        "echo '-----BEGIN RSA PRIVATE KEY-----[redacted]-----END RSA PRIVATE KEY-----' > k",
    ),
    (
        "printf '%s' '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA",
        "printf '%s' '-----BEGIN OPENSSH PRIVATE KEY-----[redacted]",
    ),
    // High-entropy tokens without a telling name.
    (
        "deploy --yes Zx9fQ2mLp8RtV4wK7cYb3NhJ",
        "deploy --yes [redacted]",
    ),
    (
        "./notify.sh 9f2c4e8a1b7d3f6a0e5c9b2d8f4a1c7e",
        "./notify.sh [redacted]",
    ),
    (
        "curl https://x/hook/aB3dE5gH7jK9mN1pQ3sT5vW7y",
        "curl https://x/hook/[redacted]",
    ),
    // JSON fields.
    (
        r#"{"username": "bob", "password": "hunter2"}"#,
        r#"{"username": "bob", "password": "[redacted]"}"#,
    ),
    (
        r#"{"client_secret":"abc\"def","id":1}"#,
        r#"{"client_secret":"[redacted]","id":1}"#,
    ),
    ("password: hunter2", "password: [redacted]"),
];

/// Ordinary commands that must pass unchanged.
const ORDINARY_CORPUS: &[&str] = &[
    "ls -la /var/log",
    "tail -n 100 /var/log/nginx/access.log | grep -v healthz | awk '{print $9}' | sort | uniq -c",
    "systemctl status nginx --no-pager",
    "journalctl -u postgresql --since '2024-01-01 00:00:00' -n 50",
    "kill -HUP $(cat /run/nginx.pid)",
    "rm -rf /tmp/build-cache",
    "for f in /etc/*.conf; do echo $f; done",
    "mysql -u root -p shop",
    "mysql -u root -P 3306 -h db.internal shop",
    "psql -h db -U app shop",
    "redis-cli -h cache ping",
    "docker login ghcr.io",
    "sort -u names.txt",
    "ps -u root -o pid,cmd",
    "docker run -u 1000:1000 -p 8080:80 nginx:1.25.3-alpine",
    "curl -sS -o /dev/null -w '%{http_code}' https://example.com/health",
    "curl -u admin https://x",
    "curl -b cookies.txt https://x",
    "echo hello | sudo tee /etc/motd",
    "echo $PASSWORD | sudo -S true",
    "echo \"$DB_PASS\" | docker login -u ci --password-stdin ghcr.io",
    "mysql -u root -p\"$MYSQL_PWD\" shop",
    "PGPASSWORD=$PGPASS psql -h db",
    "export TOKEN=${GITHUB_TOKEN}",
    "export TOKEN=$(cat /run/secrets/token)",
    "export TOKEN_FILE=/run/secrets/token",
    "export GOOGLE_APPLICATION_CREDENTIALS=/etc/gcp/key.json",
    "ssh -i ~/.ssh/id_ed25519 deploy@web-1",
    "curl --key /etc/ssl/private/client.key --cert client.pem https://x",
    "docker login -u ci --password-stdin ghcr.io < token.txt",
    "htpasswd -c /etc/nginx/.htpasswd alice",
    "openssl rsa -in key.pem -passin env:KEY_PASS -out plain.pem",
    "openssl rsa -in key.pem -passin file:/root/pass.txt -out plain.pem",
    "openssl x509 -in cert.pem -noout -fingerprint -sha256",
    "ansible-playbook --ask-pass -i inventory site.yml",
    "psql --no-password -h db shop",
    "llm --max-tokens 100 'hello'",
    "TOKENIZERS_PARALLELISM=false python train.py",
    "PASSWORD_MIN_LENGTH=12 ./check",
    "cd $PWD && PWD=/tmp ls",
    "grep -r 'password' /etc/app/ --include=*.conf",
    "echo 'use basic authentication for this'",
    "echo 'send a bearer token'",
    "git checkout 3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e",
    "git show 3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e --stat",
    "docker pull nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
    "echo 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  file.tar.gz' | sha256sum -c",
    "curl -O https://x/f.tgz --checksum sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "md5=d41d8cd98f00b204e9800998ecf8427e ./verify",
    "cat /proc/sys/kernel/random/boot_id",
    "systemctl status 550e8400-e29b-41d4-a716-446655440000",
    "lsblk -o NAME,UUID | grep 123e4567-e89b-12d3-a456-426614174000",
    "ls /usr/lib/x86_64-linux-gnu/libssl.so.3",
    "ls /var/lib/docker/containers/3f2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e/",
    "ls /nix/store/0c7bkqw7xvgf5m4jjr8f6m1zi3glf2cj-bash-5.2-p15/bin",
    "cat .git/objects/3f/2a9c1e8b7d6f5a4e3c2b1a0f9e8d7c6b5a4f3e",
    "kubectl logs kubernetes-dashboard-7d9f8b5c4-x2h8k -n kube-system",
    "kubectl rollout restart deployment/payments-api-v2-canary",
    "java -cp app.jar com.example.payments.Log4jConfigurationFactory2",
    "python -m pip install tensorflow==2.15.0.post1 torchvision==0.16.2+cu121",
    "apt-get install -y linux-image-6.1.0-18-amd64 linux-headers-6.1.0-18-common",
    "date -d 2024-01-01T12:00:00.000000Z",
    "tar czf backup-20240101T120000Z.tar.gz /srv/data",
    "aws s3 cp s3://my-bucket-2024/reports/q1.csv .",
    "aws configure set region eu-west-1",
    "aws ec2 describe-instances --instance-ids i-0abcd1234efgh5678",
    "terraform apply -var-file=prod.tfvars -auto-approve",
    "find / -xdev -name '*.log' -mtime +30 -delete",
    "ssh-keygen -t ed25519 -C alice@example.com -f ~/.ssh/id_ed25519",
    "cat ~/.ssh/id_ed25519.pub",
    "echo '-----BEGIN CERTIFICATE-----' > ca.pem",
    "sort --key=2 -t, data.csv",
    "nginx -t && systemctl reload nginx",
    "docker run --rm -v /srv/app:/app node:20-bookworm-slim npm test",
    "npm install --save-dev @typescript-eslint/eslint-plugin@6.19.0",
    "useradd -m -s /bin/bash bob",
    "ldapsearch -x -b dc=example,dc=com '(uid=bob)'",
    "curl https://hooks.example.com/deploy?ref=main",
    "echo $((1024 * 1024))",
    "token: ${{ secrets.GITHUB_TOKEN }}",
    "vault login -method=oidc",
    "password:",
];

#[test]
fn every_secret_form_of_the_corpus_is_redacted() {
    let mut failures = Vec::new();
    for (input, expected) in REDACTED_CORPUS {
        let got = r().text(input);
        if got != *expected {
            failures.push(format!(
                "  {input}\n    expected {expected}\n    got      {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} secret forms were not redacted as expected:\n{}",
        failures.len(),
        REDACTED_CORPUS.len(),
        failures.join("\n")
    );
}

#[test]
fn ordinary_commands_of_the_corpus_stay_unchanged() {
    let changed: Vec<String> = ORDINARY_CORPUS
        .iter()
        .filter_map(|cmd| {
            let got = r().text(cmd);
            (got != *cmd).then(|| format!("  {cmd}\n    became {got}"))
        })
        .collect();
    assert!(
        changed.is_empty(),
        "{} of {} ordinary commands were changed:\n{}",
        changed.len(),
        ORDINARY_CORPUS.len(),
        changed.join("\n")
    );
}

/// Picking the rules to run with one search of the set finds exactly the spans that running
/// every rule finds.
#[test]
fn the_prefilter_finds_the_spans_every_rule_finds() {
    let configured = Redactor::new(&[r"ticket (?P<secret>T[0-9]+)".to_string()]).unwrap();
    let inputs = REDACTED_CORPUS
        .iter()
        .map(|(input, _)| *input)
        .chain(ORDINARY_CORPUS.iter().copied())
        .chain(["ticket T42 and DB_PASS=hunter2x", "true", "", "web-1"]);
    for redactor in [r(), &configured] {
        for input in inputs.clone() {
            let data = input.as_bytes();
            assert_eq!(
                redactor.spans(data),
                redactor.spans_of_rules(data, |_| true),
                "{input}"
            );
        }
    }
    // Output-sized text goes rule by rule, with the same result.
    let long = REDACTED_CORPUS
        .iter()
        .map(|(input, _)| *input)
        .collect::<Vec<_>>()
        .join("\n")
        .repeat(8);
    assert!(long.len() > PREFILTER_MAX_BYTES);
    assert_eq!(
        r().spans(long.as_bytes()),
        r().spans_of_rules(long.as_bytes(), |_| true)
    );
}

#[test]
fn redaction_is_idempotent() {
    for (input, _) in REDACTED_CORPUS {
        let once = r().text(input);
        assert_eq!(r().text(&once), once, "{input}");
    }
}

/// A small deterministic generator, so the statistics below are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &[u8] = b"0123456789abcdef";
const BASE36: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Share of random strings, standing alone as an argument, that are redacted whole.
fn detected(alphabet: &[u8], len: usize) -> f64 {
    let mut rng = SplitMix(42 + len as u64);
    let n = 1000;
    let hits = (0..n)
        .filter(|_| {
            let token = rng.string(alphabet, len);
            let out = r().text(&format!("notify {token} now"));
            // At most a separator at either end may stay (`/[redacted]`).
            out.contains(REDACTED) && out.len() <= "notify  now".len() + REDACTED.len() + 2
        })
        .count();
    hits as f64 / n as f64
}

#[test]
fn random_tokens_are_found_by_their_entropy() {
    for (name, alphabet, len, at_least) in [
        ("base62", BASE62, 20, 0.85),
        ("base62", BASE62, 24, 0.9),
        ("base62", BASE62, 32, 0.97),
        ("base62", BASE62, 40, 0.99),
        ("base64", BASE64, 40, 0.97),
        ("hex", HEX, 32, 0.99),
        ("hex", HEX, 64, 0.99),
        ("base36", BASE36, 32, 0.8),
    ] {
        let share = detected(alphabet, len);
        assert!(
            share >= at_least,
            "{name} of {len} characters: {share:.3} found, expected at least {at_least}"
        );
    }
}

#[test]
fn secret_names_are_told_from_names_about_secrets() {
    for name in [
        "DB_PASS",
        "PGPASSWORD",
        "MYSQL_PWD",
        "password",
        "--password",
        "api_key",
        "X-Api-Key",
        "client_secret",
        "clientSecret",
        "GITHUB_TOKEN",
        "authtoken",
        "storepass",
        "aws_secret_access_key",
        "SSH_KEY",
        "sig",
        "pass",
    ] {
        assert!(is_secret_name(name), "{name} should be a secret name");
    }
    for name in [
        "PWD",
        "TOKEN_FILE",
        "--password-stdin",
        "--no-password",
        "--ask-pass",
        "max_tokens",
        "TOKENIZERS_PARALLELISM",
        "token_type",
        "username",
        "user",
        "bypass_cache",
        "key_id",
        "passes",
    ] {
        assert!(!is_secret_name(name), "{name} should not be a secret name");
    }
}

#[test]
fn output_with_invalid_utf8_is_redacted_around_it() {
    let data = b"\xff\xfe password=hunter2 \xc3\x28 ok\n";
    let out = r().bytes(data);
    assert_eq!(&out[..], b"\xff\xfe password=[redacted] \xc3\x28 ok\n");
}

#[test]
fn configured_patterns_add_to_the_built_in_ones_and_bad_ones_are_named() {
    let r = Redactor::new(&[
        r"corp-[0-9]{6}".to_string(),
        r"ticket (?P<secret>T[0-9]+)".to_string(),
    ])
    .unwrap();
    assert_eq!(r.text("use corp-123456 here"), "use [redacted] here");
    assert_eq!(r.text("ticket T42 open"), "ticket [redacted] open");
    assert_eq!(r.text("DB_PASS=x y"), "DB_PASS=[redacted] y");
    let err = Redactor::new(&["(unclosed".to_string()]).unwrap_err();
    assert!(err.to_string().contains("(unclosed"), "{err}");
}

#[test]
fn a_job_status_is_redacted_where_it_shows_the_request() {
    let mut status = pb::JobStatus {
        cmd: "DB_PASS=hunter2 ./migrate".into(),
        title: "migrate with token=abc123".into(),
        host: "db-1".into(),
        ..Default::default()
    };
    r().job_status(&mut status);
    assert_eq!(status.cmd, "DB_PASS=[redacted] ./migrate");
    assert_eq!(status.title, "migrate with token=[redacted]");
    assert_eq!(status.host, "db-1");
}

#[test]
fn argument_summaries_drop_env_values_content_and_secret_keys() {
    let args = serde_json::json!({
        "host": "web-1",
        "cmd": "PGPASSWORD=x psql",
        "env": {"API_KEY": "k1", "HOME": "/root"},
        "password": "p",
        "content": "line one\nline two\n",
        "long": "y".repeat(1000),
    });
    let summary: Value = serde_json::from_str(&r().args(args.as_object().unwrap())).unwrap();
    assert_eq!(summary["host"], "web-1");
    assert_eq!(summary["cmd"], "PGPASSWORD=[redacted] psql");
    assert_eq!(summary["env"]["API_KEY"], REDACTED);
    assert_eq!(summary["env"]["HOME"], REDACTED);
    assert_eq!(summary["password"], REDACTED);
    assert_eq!(summary["content"], "[18 bytes]");
    assert!(summary["long"].as_str().unwrap().ends_with("…[+744 bytes]"));
}

#[test]
fn text_ends_inside_a_private_key_block_only_after_an_opening_line_left_open() {
    let inside = [
        "-----BEGIN PRIVATE KEY-----\n",
        "ok\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
        "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n-----BEGIN EC PRIVATE KEY-----\n",
    ];
    for text in inside {
        assert!(ends_inside_private_key(text.as_bytes()), "{text:?}");
    }
    let outside = [
        "",
        "ok\n",
        "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
        "x\n-----END PRIVATE KEY-----\n",
    ];
    for text in outside {
        assert!(!ends_inside_private_key(text.as_bytes()), "{text:?}");
    }
}
