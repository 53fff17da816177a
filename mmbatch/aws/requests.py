"""One AWS API request: service, operation and input, checked against botocore's model.

`ApiRequest.validate()` runs botocore's ParamValidator on the operation's
input shape from the service model botocore ships (no credentials, no
network), exactly the check a boto3 client makes before it sends anything.
`cli_command()` is how an operator applies it: the input is what the AWS
CLI's `--cli-input-json` takes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Dict

from mmbatch.aws.errors import InvalidRequest, KitError


@functools.cache
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@dataclass(frozen=True)
class ApiRequest:
    """The input of one API call, e.g. ("batch", "CreateJobQueue", {...})."""

    service: str
    operation: str
    params: Dict[str, Any]

    def operation_model(self) -> Any:
        try:
            return _service_model(self.service).operation_model(self.operation)
        except Exception as e:  # UnknownServiceError, OperationNotFoundError
            raise KitError(f"botocore has no {self.service} {self.operation}: {e}") from e

    def validate(self) -> ApiRequest:
        """Self, when botocore accepts the input; InvalidRequest with botocore's report otherwise."""
        from botocore.validate import ParamValidator

        report = ParamValidator().validate(self.params, self.operation_model().input_shape)
        if report.has_errors():
            raise InvalidRequest(self.service, self.operation, report.generate_report())
        return self

    def cli_command(self, input_file: str) -> str:
        """`aws SERVICE OPERATION --cli-input-json file://INPUT_FILE`."""
        from botocore import xform_name

        service = "s3api" if self.service == "s3" else self.service
        return f"aws {service} {xform_name(self.operation, '-')} --cli-input-json file://{input_file}"

    def to_json(self) -> str:
        return json.dumps(self.params, indent=2, sort_keys=False) + "\n"
