"""AWS KMS key provider (boto3): KEKs never leave the key service.

* ``generate_data_key`` → KMS ``GenerateDataKey`` (KeySpec AES_256) with the encryption context;
* ``unwrap`` → ``Decrypt`` with the same context and the expected ``KeyId`` (so a blob cannot be
  redirected to another key);
* ``rewrap`` → ``ReEncrypt`` to the current key: the data key is never exposed to this process.

KMS rotates key material inside a key on its own (old material stays usable); this provider's KEK ids are
KMS key ARNs, and *rotation* here means moving every wrapped key to another KMS key: set
``ARCHIVE_KEYS=aws-kms:<new key>`` and run ``archive keys rotate``. ``destroy`` schedules deletion of an
old key (KMS enforces a waiting period of 7 … 30 days) once nothing needs it.

The encryption context (object, record and part) appears in CloudTrail: it holds identifiers, never
content.
"""

from __future__ import annotations

from collections.abc import Mapping

from archive.errors import IntegrityError, KeyServiceUnavailable, KeyUnavailable
from archive.keys.base import KekInfo, WrappedKey

PROVIDER = "aws-kms"
_TRANSIENT = {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
              "ServiceUnavailable", "RequestTimeout"}
_DENIED = {"AccessDeniedException", "NotFoundException", "DisabledException", "KMSInvalidStateException",
           "KeyUnavailableException", "IncorrectKeyException"}


def _translate(e: Exception, what: str, context: Mapping[str, str] | None = None) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code", "")
        request_id = e.response.get("ResponseMetadata", {}).get("RequestId")
        msg = f"KMS {what}: {code}: {err.get('Message', '')}".rstrip(": ")
        if code in _TRANSIENT:
            return KeyServiceUnavailable(msg, request_id=request_id, vendor_code=code)
        if code == "InvalidCiphertextException":
            obj = (context or {}).get("archive:object")
            return IntegrityError(f"wrapped data key for {obj or '?'} does not decrypt under KMS "
                                  "(altered, or bound to another object)", object_key=obj,
                                  segment="wrapped-key", request_id=request_id)
        if code in _DENIED:
            return KeyUnavailable(msg, request_id=request_id, vendor_code=code)
        return KeyUnavailable(msg, request_id=request_id, vendor_code=code)
    if isinstance(e, BotoCoreError):
        return KeyServiceUnavailable(f"KMS {what}: {e}")
    return e


class KmsProvider:
    """Data keys from AWS KMS (or any service speaking its API, through ``endpoint_url``)."""

    name = PROVIDER

    def __init__(self, key_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                 client=None) -> None:
        import boto3
        from botocore.config import Config

        self._client = client or boto3.client(
            "kms", region_name=region, endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 5}))
        try:  # fail in the constructor: resolve the key id or alias to its ARN now
            meta = self._client.describe_key(KeyId=key_id)["KeyMetadata"]
        except Exception as e:
            raise _translate(e, f"DescribeKey {key_id}") from e
        self._arn = meta["Arn"]

    def current_kek(self) -> str:
        return self._arn

    def generate_data_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        try:
            out = self._client.generate_data_key(KeyId=self._arn, KeySpec="AES_256",
                                                 EncryptionContext=dict(context))
        except Exception as e:
            raise _translate(e, "GenerateDataKey", context) from e
        return out["Plaintext"], WrappedKey(PROVIDER, out.get("KeyId") or self._arn, out["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.provider != PROVIDER:
            raise KeyUnavailable(f"data key was wrapped by {wrapped.provider!r}, not by AWS KMS",
                                 kek_id=wrapped.kek_id)
        try:
            return self._client.decrypt(CiphertextBlob=wrapped.blob, KeyId=wrapped.kek_id,
                                        EncryptionContext=dict(context))["Plaintext"]
        except Exception as e:
            raise _translate(e, "Decrypt", context) from e

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        try:
            out = self._client.re_encrypt(CiphertextBlob=wrapped.blob, SourceKeyId=wrapped.kek_id,
                                          SourceEncryptionContext=dict(context),
                                          DestinationKeyId=self._arn,
                                          DestinationEncryptionContext=dict(context))
        except Exception as e:
            raise _translate(e, "ReEncrypt", context) from e
        return WrappedKey(PROVIDER, out.get("KeyId") or self._arn, out["CiphertextBlob"])

    def rotate(self) -> str:
        # KMS rotates material inside a key itself; moving to another key is a configuration change.
        return self._arn

    def keks(self) -> list[KekInfo]:
        return [KekInfo(self._arn, "current")]

    def destroy(self, kek_id: str) -> None:
        if kek_id == self._arn:
            raise KeyUnavailable(f"{kek_id} is the current KMS key; configure another key and rotate first",
                                 kek_id=kek_id)
        try:
            self._client.schedule_key_deletion(KeyId=kek_id, PendingWindowInDays=30)
        except Exception as e:
            raise _translate(e, f"ScheduleKeyDeletion {kek_id}") from e
