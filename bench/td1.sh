#!/usr/bin/env bash
# Benchmark, side by side in one run against the same LocalStack: TD1 up + down with
#   - labctl (`labctl --profile localstack td1 up` / `down`),
#   - the equivalent aws CLI sequence (describe-images, create-security-group,
#     authorize-security-group-ingress, create-key-pair, run-instances, wait, and back),
#   - terraform apply / destroy of bench/td1-terraform (when terraform or tofu is installed,
#     with the offline provider mirror; `init` is done once, outside the timings).
# Medians over ROUNDS rounds (default 3). Writes bench/RESULTS-td1.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/labctl/target}
ROUNDS=${ROUNDS:-3}
ENDPOINT=http://127.0.0.1:4566
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-2 AWS_EC2_METADATA_DISABLED=true

testenv/up.sh localstack >/dev/null
cargo build -q --release
LABCTL="$CARGO_TARGET_DIR/release/labctl"
labctl() { "$LABCTL" -q --yes --profile localstack --owner bench --state-dir "$WORK/state" "$@"; }

# The same user-data labctl sends (rendered with the lab's defaults).
sed -e 's/{{ port }}/80/' -e 's/{{ message }}/Hello, World!/' userdata/td1.sh > "$WORK/user-data.sh"

aws_ec2() { aws --endpoint-url "$ENDPOINT" --output text ec2 "$@"; }
cli_up() {
  local ami sg
  ami=$(aws_ec2 describe-images --owners amazon --filters 'Name=name,Values=al2023-ami-2023.*-x86_64' \
        --query 'sort_by(Images,&CreationDate)[-1].ImageId')
  sg=$(aws_ec2 create-security-group --group-name cli-sample-app-bench --description "TD1 (cli)" --query GroupId)
  aws_ec2 authorize-security-group-ingress --group-id "$sg" --protocol tcp --port 80 --cidr 0.0.0.0/0 >/dev/null
  aws_ec2 create-key-pair --key-name cli-sample-app-bench --query KeyMaterial > "$WORK/cli.pem"
  chmod 600 "$WORK/cli.pem"
  CLI_ID=$(aws_ec2 run-instances --image-id "$ami" --instance-type t3.micro --security-group-ids "$sg" \
        --key-name cli-sample-app-bench --user-data "file://$WORK/user-data.sh" \
        --tag-specifications 'ResourceType=instance,Tags=[{Key=Name,Value=cli-sample-app-bench}]' \
        --query 'Instances[0].InstanceId')
  aws_ec2 wait instance-running --instance-ids "$CLI_ID"
  echo "$CLI_ID" > "$WORK/cli.id"
}
cli_down() {
  local id sg
  id=$(cat "$WORK/cli.id")
  aws_ec2 terminate-instances --instance-ids "$id" >/dev/null
  aws_ec2 wait instance-terminated --instance-ids "$id"
  sg=$(aws_ec2 describe-security-groups --filters Name=group-name,Values=cli-sample-app-bench --query 'SecurityGroups[0].GroupId')
  aws_ec2 delete-security-group --group-id "$sg" >/dev/null
  aws_ec2 delete-key-pair --key-name cli-sample-app-bench >/dev/null
}

TF=$(command -v tofu || command -v terraform || true)
MIRROR=$(find / -maxdepth 4 -type d -name registry.terraform.io -path '*plugins*' 2>/dev/null | head -1 || true)
if [ -n "$TF" ] && [ -n "$MIRROR" ]; then
  cat > "$WORK/tf.rc" <<RC
provider_installation {
  filesystem_mirror { path = "$(dirname "$MIRROR")" }
  direct { exclude = ["registry.terraform.io/*/*"] }
}
RC
  export TF_CLI_CONFIG_FILE="$WORK/tf.rc"
  cp -r bench/td1-terraform "$WORK/tf"
  cp "$WORK/user-data.sh" "$WORK/tf/user-data.sh"
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/tf-key" 2>/dev/null || python3 -c "print('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchBen bench')" > "$WORK/tf-key.pub"
  TFVARS=(-var "owner=bench" -var "endpoint=$ENDPOINT" -var "public_key=$(cat "$WORK/tf-key.pub")")
  (cd "$WORK/tf" && "$TF" init -input=false >/dev/null)
  tf_up() { (cd "$WORK/tf" && "$TF" apply -auto-approve -input=false "${TFVARS[@]}" >/dev/null); }
  tf_down() { (cd "$WORK/tf" && "$TF" destroy -auto-approve -input=false "${TFVARS[@]}" >/dev/null); }
else
  TF=""
  echo "terraform/tofu or its offline provider mirror is missing: the terraform column is skipped" >&2
fi

for i in $(seq 1 "$ROUNDS"); do
  add labctl_up "$(t labctl td1 up)"
  add labctl_noop "$(t labctl td1 up)"
  add labctl_down "$(t labctl td1 down)"
  add cli_up "$(t cli_up)"
  add cli_down "$(t cli_down)"
  if [ -n "$TF" ]; then
    add tf_up "$(t tf_up)"
    add tf_noop "$(t tf_up)"
    add tf_down "$(t tf_down)"
  fi
  echo "round $i/$ROUNDS done" >&2
done

LU=$(m labctl_up) LN=$(m labctl_noop) LD=$(m labctl_down) CU=$(m cli_up) CD=$(m cli_down)
out=bench/RESULTS-td1.md
{
  echo "# TD1 benchmark: labctl vs aws CLI vs terraform, against LocalStack"
  echo
  echo "Command: \`bench/td1.sh\` (ROUNDS=$ROUNDS, medians in seconds, all tools in one run against the same"
  echo "LocalStack $(curl -s $ENDPOINT/_localstack/info | python3 -c 'import json,sys; print(json.load(sys.stdin).get("version",""))' 2>/dev/null);"
  echo "$(aws --version 2>&1 | cut -d' ' -f1)${TF:+, $("$TF" version | head -1)}; labctl release build; $(date -u +%Y-%m-%d))."
  echo "Each 'up' = AMI lookup + security group + HTTP rule + key pair + t3.micro instance with user-data, waited until running."
  echo
  echo "| | labctl | aws CLI | labctl / aws CLI |${TF:+ terraform | labctl / terraform |}"
  echo "|---|---|---|---|${TF:+---|---|}"
  if [ -n "$TF" ]; then
    TU=$(m tf_up) TN=$(m tf_noop) TD=$(m tf_down)
    echo "| up | $LU | $CU | $(ratio "$LU" "$CU") | $TU | $(ratio "$LU" "$TU") |"
    echo "| up again (no change) | $LN | (not idempotent: fails on the existing group) | - | $TN | $(ratio "$LN" "$TN") |"
    echo "| down | $LD | $CD | $(ratio "$LD" "$CD") | $TD | $(ratio "$LD" "$TD") |"
  else
    echo "| up | $LU | $CU | $(ratio "$LU" "$CU") |"
    echo "| up again (no change) | $LN | (not idempotent) | - |"
    echo "| down | $LD | $CD | $(ratio "$LD" "$CD") |"
  fi
  echo
  raw_samples labctl_up labctl_noop labctl_down cli_up cli_down tf_up tf_noop tf_down
} > "$out"
cat "$out"
