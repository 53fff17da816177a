"""The AWS Batch deployment kit: what an AWS account needs to run protected jobs.

Generators only: each module builds the input of one or more AWS API calls
(or a workflow manager's configuration) from a few choices, and every API
request is checked against botocore's own service model before it is shown
(`requests.ApiRequest.validate`). Nothing here calls AWS; `mmbatch aws ...`
(`cli.py`) prints or writes the requests, and the operator applies them with
the AWS CLI (`aws SERVICE OPERATION --cli-input-json file://...`).

- `user_data`: launch-template user data (MIME multipart for cloud-init)
  that installs mmbatch on an ECS-optimized AL2023/AL2 node;
- `node_settings`: run on the node by that user data: the S3 settings of
  /etc/mmbatch/config.toml that install.sh does not take;
- `launch_template`, `batch`: EC2 launch template, Spot compute environment,
  job queue, job definition with its retryStrategy;
- `iam`: the least-privilege policy of the instance role;
- `s3_bucket`: bucket policy, default encryption, public access block,
  ownership, and the lifecycle rule that only removes what gc marked;
- `workflows`: Nextflow and Cromwell configuration;
- `kit`: all of the above into one directory with an apply script.

docs/aws.md walks through the set-up.
"""
