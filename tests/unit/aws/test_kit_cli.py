"""`mmbatch aws ...` end to end: the kit directory, apply.sh, and each subcommand's output."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from mmbatch import cli
from mmbatch.aws import kit
from mmbatch.aws.requests import ApiRequest

KIT_ARGS = ["--store", "s3://ckpt-bucket/mmbatch", "--source", "s3://deploy-bucket/mmbatch.tar.gz",
            "--region", "us-east-1", "--account", "111122223333", "--subnets", "subnet-0a,subnet-0b",
            "--security-groups", "sg-01", "--instance-role", "ecsInstanceRole"]


def _run(capsys, *argv):
    rc = cli.main(["--config", "/nonexistent/config.toml", "aws", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_kit_writes_every_file_and_a_valid_apply_script(tmp_path, capsys):
    out_dir = tmp_path / "kit"
    rc, out, _ = _run(capsys, "kit", *KIT_ARGS, "--out", str(out_dir))
    assert rc == 0
    names = sorted(os.listdir(out_dir))
    assert "apply.sh" in names and "user-data.mime" in names and "nextflow.config" in names
    assert stat.S_IMODE(os.stat(out_dir).st_mode) == 0o700
    script = (out_dir / "apply.sh").read_text()
    assert subprocess.run(["bash", "-n", str(out_dir / "apply.sh")]).returncode == 0
    for name in names:
        if not name.endswith(".json"):
            continue
        doc = json.loads((out_dir / name).read_text())
        service, _, rest = name.partition("-")
        if rest.startswith(("create", "put", "register")):
            op = "".join(w.capitalize() for w in rest[:-len(".json")].split("-"))
            ApiRequest(service, op, doc).validate()
            assert f"--cli-input-json file://{name}" in script
    order = [line for line in script.splitlines() if "--cli-input-json" in line]
    assert "put-bucket-policy" in order[3] and "register-job-definition" in order[-1]
    rc, _, err = _run(capsys, "kit", *KIT_ARGS, "--out", str(out_dir))
    assert rc == 1 and "--force" in err


@pytest.mark.parametrize("argv,check", [
    (["iam-policy", "--store", "s3://b-1/p"], lambda o: json.loads(o)["Version"] == "2012-10-17"),
    (["iam-policy", "--store", "s3://b-1/p", "--instance-role", "ecsInstanceRole"],
     lambda o: json.loads(o)["RoleName"] == "ecsInstanceRole"),
    (["bucket-policy", "--store", "s3://b-1/p"], lambda o: json.loads(o)["Bucket"] == "b-1"),
    (["lifecycle", "--store", "s3://b-1/p"], lambda o: len(json.loads(o)["LifecycleConfiguration"]["Rules"]) == 2),
    (["compute-environment", "--subnets", "subnet-1", "--security-groups", "sg-1", "--instance-profile", "p"],
     lambda o: json.loads(o)["computeResources"]["type"] == "SPOT"),
    (["job-queue"], lambda o: json.loads(o)["jobQueueName"] == "mmbatch-spot"),
    (["job-definition", "--image", "img:1", "python3", "job.py"],
     lambda o: json.loads(o)["containerProperties"]["command"] == ["python3", "job.py"]),
    (["nextflow", "--region", "us-east-1"], lambda o: "maxSpotAttempts = 5" in o),
    (["cromwell", "--queue-arn", "arn:aws:batch:us-east-1:111122223333:job-queue/q", "--region", "us-east-1",
      "--root", "s3://b-1/c"], lambda o: "awsBatchRetryAttempts = 5" in o),
    (["user-data", "--store", "s3://b-1/p", "--source", "s3://b-1/src.tgz", "--region", "us-east-1"],
     lambda o: o.startswith("Content-Type: multipart/mixed")),
])
def test_subcommands(capsys, argv, check):
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    assert check(out)


def test_launch_template_from_a_user_data_file(tmp_path, capsys):
    rc, out, _ = _run(capsys, "user-data", "--store", "s3://b-1/p", "--source", "s3://b-1/src.tgz",
                      "--region", "us-east-1")
    path = tmp_path / "ud.mime"
    path.write_text(out)
    rc, out, err = _run(capsys, "launch-template", "--user-data", str(path))
    assert rc == 0, err
    assert json.loads(out)["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    assert "aws ec2 create-launch-template --cli-input-json" in err


def test_errors_name_the_option(capsys):
    rc, _, err = _run(capsys, "user-data", "--store", "s3://b-1/p", "--source", "s3://b-1/s.tgz",
                      "--region", "us-east-1", "--stop-timeout", "30s")
    assert rc == 1 and "--stop-timeout" in err


def test_kit_options_names():
    o = kit.KitOptions(store="s3://b-1/p", source="s3://b-1/s.tgz", region="us-east-1", account="111122223333",
                       subnets=["s"], security_groups=["g"], instance_role="r", name="team-a")
    assert o.names()["job_queue"] == "team-a-spot"


# The AWS CLI as apply.sh uses it: each call logged; describe-compute-environments with
# `--query 'computeEnvironments[0].[status,statusReason]' --output text` prints "STATUS<TAB>REASON".
FAKE_AWS = """#!/bin/sh
echo "$*" >> "$FAKE_AWS_LOG"
case "$1 $2" in
  "batch describe-compute-environments") printf '%s\\t%s\\n' "$FAKE_CE_STATUS" "$FAKE_CE_REASON" ;;
esac
exit 0
"""


@pytest.mark.parametrize("status,reason,rc", [
    ("VALID", "ComputeEnvironment Healthy", 0),
    ("INVALID", "CLIENT_ERROR - instance profile ecsInstanceRole does not exist", 1),
])
def test_apply_script_waits_for_a_valid_compute_environment(tmp_path, status, reason, rc):
    opts = kit.KitOptions(store="s3://b-1/p", source="s3://b-1/s.tgz", region="us-east-1", account="111122223333",
                          subnets=["subnet-1"], security_groups=["sg-1"], instance_role="ecsInstanceRole")
    out_dir = tmp_path / "kit"
    kit.write(opts, str(out_dir))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    log = tmp_path / "aws.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_AWS_LOG=str(log),
               FAKE_CE_STATUS=status, FAKE_CE_REASON=reason)
    proc = subprocess.run(["bash", str(out_dir / "apply.sh")], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == rc, proc.stderr
    calls = [line.split()[:2] for line in log.read_text().splitlines()]
    assert calls.index(["batch", "create-compute-environment"]) < calls.index(
        ["batch", "describe-compute-environments"])
    if rc == 0:
        assert calls[-2:] == [["batch", "create-job-queue"], ["batch", "register-job-definition"]]
    else:
        assert ["batch", "create-job-queue"] not in calls, "no queue on an INVALID compute environment"
        assert "mmbatch-spot is INVALID" in proc.stderr and "does not exist" in proc.stderr
