"""Amazon Bedrock: OpenAI-shaped chat and completions ↔ the Bedrock Runtime Converse API, and
embeddings ↔ InvokeModel for Amazon Titan Text Embeddings.

``POST https://bedrock-runtime.{aws_region}.amazonaws.com/model/{modelId}/converse`` (and
``/converse-stream``, ``/invoke``), signed with AWS Signature Version 4 (service ``bedrock``,
region ``aws_region``; ``aws.sign``) with the access key id and secret access key read from the
secrets store. Converse is one shape for every model family on Bedrock, so ``bedrock_provider``
(anthropic, cohere, ai21labs, amazon) matters only for embeddings. The translation:

- system messages become ``system: [{text}]``; user and assistant messages become
  ``messages: [{role, content: [{text}]}]``; ``max_tokens``, ``temperature``, ``top_p`` and
  ``stop`` become ``inferenceConfig`` ``maxTokens``, ``temperature``, ``topP``,
  ``stopSequences``; ``n`` above 1 is refused (Converse answers one message);
- a completions request is one user message, answered as ``text_completion``;
- the answer's ``output.message.content[].text`` becomes the choice's content, ``stopReason`` the
  finish reason (end_turn, stop_sequence → stop; max_tokens → length; tool_use → tool_calls;
  guardrail_intervened, content_filtered → content_filter), ``usage.inputTokens``/``outputTokens``
  the prompt/completion tokens;
- ``stream: true`` goes to ``/converse-stream``, whose answer is AWS's binary event stream
  (messageStart, contentBlockDelta, messageStop, metadata with the usage), read by
  ``aws.event_stream`` and turned into OpenAI chunks;
- embeddings (``bedrock_provider`` ``amazon``): ``POST /model/{modelId}/invoke`` with
  ``{"inputText"}`` (Titan embeds one text per call, so ``input`` is one string) → ``embedding``
  and ``inputTextTokenCount``.

``instance_profile_arn`` and ``uc_service_credential_name`` are stored but answer 501: they need
the cloud's instance metadata service or Unity Catalog, which this server does not reach.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers import aws
from endpoints_app.gateway.providers.base import (
    CHAT,
    EMBEDDINGS,
    Field,
    NotTranslated,
    Provider,
    RequestRejected,
    StreamDecoder,
    StreamFailed,
    UpstreamRequest,
    Usage,
    has_secret,
    join_url,
    stop_list,
)
from endpoints_app.gateway.providers.translate import (
    ChunkDecoder,
    chat_messages,
    embeddings_answer,
    input_texts,
    one_choice,
    openai_answer,
    prompt_text,
)

BEDROCK_PROVIDERS = ("anthropic", "cohere", "ai21labs", "amazon")
SERVICE = "bedrock"
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# OpenAI request field → its name in ``inferenceConfig``.
_INFERENCE_FIELDS = {"max_tokens": "maxTokens", "temperature": "temperature", "top_p": "topP"}
# Bedrock's status for an error the model itself raised (ModelErrorException): the provider failed.
MODEL_ERROR = 424


def usage_from(usage: Any) -> Usage:
    usage = usage if isinstance(usage, dict) else {}
    return Usage(int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0))


def finish_reason(value: Any) -> str | None:
    return FINISH_REASONS.get(value, value) if isinstance(value, str) else None


# An AWS region (us-east-1, us-gov-west-1, cn-north-1, ap-southeast-4): it becomes part of a host
# name, so nothing else (no "evil.example#", no dots) may get in.
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


def host_of_region(region: str) -> str:
    """Bedrock Runtime's host in ``region`` (``check_config`` made sure it is a region)."""
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class AmazonBedrockProvider(Provider):
    name = "amazon-bedrock"
    config_key = "amazon_bedrock_config"
    fields = (
        Field("aws_region", required=True),
        Field("bedrock_provider", required=True, choices=BEDROCK_PROVIDERS, case_insensitive=True),
        Field("aws_access_key_id", secret=True),
        Field("aws_secret_access_key", secret=True),
        Field("instance_profile_arn"),
        Field("uc_service_credential_name"),
    )
    stream_format = "aws-eventstream"

    def check_config(self, config: dict[str, Any], where: str) -> None:
        if not REGION.fullmatch(config["aws_region"]):
            raise InvalidParameterValue(
                f"{where}.aws_region '{config['aws_region']}' is not an AWS region (like us-east-1 or eu-west-3)"
            )
        keys = [has_secret(config, "aws_access_key_id"), has_secret(config, "aws_secret_access_key")]
        if any(keys) and not all(keys):
            raise InvalidParameterValue(f"{where}: aws_access_key_id and aws_secret_access_key go together")
        methods = [
            name
            for name, given in (
                ("aws_access_key_id/aws_secret_access_key", all(keys)),
                ("instance_profile_arn", bool(config.get("instance_profile_arn"))),
                ("uc_service_credential_name", bool(config.get("uc_service_credential_name"))),
            )
            if given
        ]
        if len(methods) != 1:
            raise InvalidParameterValue(
                f"{where}: give exactly one way to authenticate to AWS: aws_access_key_id with aws_secret_access_key, "
                "instance_profile_arn, or uc_service_credential_name"
                + (f" (got {', '.join(methods)})" if methods else "")
            )

    def destinations(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        return [("aws_region", host_of_region(config["aws_region"]))]

    def build_request(
        self,
        *,
        task: str,
        model: str,
        config: dict[str, Any],
        credentials: dict[str, str],
        body: dict[str, Any],
        base_url: str,
    ) -> UpstreamRequest:
        access_key_id = credentials.get("aws_access_key_id")
        secret_access_key = credentials.get("aws_secret_access_key")
        if not access_key_id or not secret_access_key:
            method = "instance_profile_arn" if config.get("instance_profile_arn") else "uc_service_credential_name"
            raise NotTranslated(
                f"signing in to Amazon Bedrock with {method} is not supported by this server (it needs the cloud's "
                "instance metadata service or Unity Catalog); configure aws_access_key_id and aws_secret_access_key"
            )
        region = config["aws_region"]
        base = base_url or host_of_region(region)
        model_path = f"model/{quote(model, safe='')}"
        stream = bool(body.get("stream"))
        if task == EMBEDDINGS:
            url, out = join_url(base, f"{model_path}/invoke"), self._titan_body(config, body)
        else:
            action = "converse-stream" if stream else "converse"
            url, out = join_url(base, f"{model_path}/{action}"), self._converse_body(task, body)
        content = json.dumps(out, separators=(",", ":")).encode()
        headers = aws.sign(
            method="POST",
            url=url,
            headers={"content-type": "application/json"},
            body=content,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region=region,
            service=SERVICE,
        )
        # Not signed: which framing the answer comes in.
        headers["accept"] = "application/vnd.amazon.eventstream" if stream else "application/json"
        return UpstreamRequest(url=url, headers=headers, json=out, stream=stream, content=content)

    @staticmethod
    def _titan_body(config: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if str(config.get("bedrock_provider", "")).lower() != "amazon":
            raise NotTranslated(
                "embeddings through Amazon Bedrock are translated for bedrock_provider 'amazon' "
                "(Titan Text Embeddings) only"
            )
        texts = input_texts(body, "Amazon Titan Text Embeddings")
        if len(texts) != 1:
            raise RequestRejected(
                "Amazon Titan Text Embeddings embeds one text per request; send 'input' as one string"
            )
        out: dict[str, Any] = {"inputText": texts[0]}
        if isinstance(body.get("dimensions"), int):
            out["dimensions"] = body["dimensions"]
        return out

    @staticmethod
    def _converse_body(task: str, body: dict[str, Any]) -> dict[str, Any]:
        one_choice(body, "Amazon Bedrock")
        if task == CHAT:
            system, messages = chat_messages(body["messages"], "Amazon Bedrock")
        else:
            system, messages = [], [("user", prompt_text(body, "Amazon Bedrock"))]
        out: dict[str, Any] = {"messages": [{"role": role, "content": [{"text": text}]} for role, text in messages]}
        if system:
            out["system"] = [{"text": text} for text in system]
        inference = {theirs: body[ours] for ours, theirs in _INFERENCE_FIELDS.items() if body.get(ours) is not None}
        stops = stop_list(body.get("stop"))
        if stops:
            inference["stopSequences"] = stops
        if inference:
            out["inferenceConfig"] = inference
        return out

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        if task == EMBEDDINGS:
            vector = data.get("embedding")
            if not isinstance(vector, list):
                raise ValueError("the answer has no embedding")
            return embeddings_answer(
                model=model, vectors=[vector], prompt_tokens=int(data.get("inputTextTokenCount") or 0)
            )
        message = (data.get("output") or {}).get("message")
        if not isinstance(message, dict):
            raise ValueError("the answer has no output.message")
        text = "".join(
            block["text"] for block in message.get("content") or [] if isinstance(block, dict) and "text" in block
        )
        return openai_answer(
            task=task,
            id=None,
            model=model,
            choices=[(text, finish_reason(data.get("stopReason")))],
            usage=usage_from(data.get("usage")),
        )

    def error_message(self, data: Any) -> str:
        # {"message": "..."}; some services spell it "Message".
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            return data["Message"]
        return super().error_message(data)

    def error_status(self, status: int, data: Any) -> int:
        return 502 if status == MODEL_ERROR else status

    async def stream_events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
        """Each event-stream message as ``(":event-type", payload)``; an exception message as
        ``("exception:<type>", payload)``."""
        try:
            async for headers, payload in aws.event_stream(chunks):
                kind = headers.get(":message-type", "event")
                if kind == "event":
                    yield str(headers.get(":event-type", "")), payload.decode("utf-8", errors="replace")
                else:
                    name = headers.get(":exception-type") or headers.get(":error-code") or kind
                    text = payload.decode("utf-8", errors="replace") or json.dumps(
                        {"message": str(headers.get(":error-message", ""))}
                    )
                    yield f"exception:{name}", text
        except aws.EventStreamError as exc:
            yield "exception:corruptStream", json.dumps({"message": str(exc)})

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return BedrockStreamDecoder(task=task, model=model)


class BedrockStreamDecoder(ChunkDecoder):
    """messageStop says why the answer ended, and metadata (the last event) brings the usage: the
    finish chunk waits for it, so it carries the whole usage like other providers' last chunk."""

    def __init__(self, *, task: str, model: str) -> None:
        super().__init__(task=task, model=model)
        self.finish: str | None = None

    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if event.startswith("exception:"):
            message = payload.get("message") or payload.get("Message") or ""
            raise StreamFailed(f"{event.partition(':')[2]}: {message}".strip(": "))
        if event == "messageStart":
            return [self.chunk()]
        if event == "contentBlockDelta":
            text = (payload.get("delta") or {}).get("text")
            return [self.chunk(text=text)] if text else []
        if event == "messageStop":
            self.finish = finish_reason(payload.get("stopReason")) or "stop"
            return []
        if event == "metadata":
            self.usage = usage_from(payload.get("usage"))
            self.done = True
            return [self.chunk(finish=self.finish or "stop")]
        return []  # contentBlockStart, contentBlockStop
