"""Request and response shapes for the OpenAPI page (/docs). Requests are validated by
llm4tag.service, which names the offending field; these models only document the shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TagItemIn(BaseModel):
    id: str | None = Field(None, description="Your id for the item (default: item-<index>).")
    text: str = Field(
        ..., description="The item's text (non-empty).", examples=["my card has not arrived yet"]
    )


class TagRequestIn(BaseModel):
    items: list[TagItemIn] = Field(..., description="Items to tag (a single item may also be sent bare).")
    candidates: bool = Field(False, description="Also return the recalled candidates.")
    dropped: bool = Field(False, description="Also return generated tags that calibration dropped.")


class TagOut(BaseModel):
    tag: str
    confidence: float | None = Field(None, description="Calibrated P(Yes); null when calibration is off.")
    source: str = Field(..., description="Recall meta-path(s) that found the tag: C2T, C2C2T, fill, llm.")
    recall_score: float | None = None
    via: list[str] | None = Field(None, description="Neighbour items behind a C2C2T candidate.")


class RowOut(BaseModel):
    id: str
    tags: list[TagOut]
    generated: list[str] = Field(..., description="The LLM's choice in its own order, before calibration.")
    knowledge: dict = Field(..., description="Ids of the retrieved samples and knowledge snippets.")
    dropped: list[TagOut] | None = None
    candidates: list[dict] | None = None


class TagResponseOut(BaseModel):
    items: list[RowOut]
    timings_ms: dict[str, float]


class FeedbackItemIn(BaseModel):
    id: str = Field(..., description="The corrected item's id.")
    text: str
    tags: list[str] = Field(default_factory=list, description="Correct tags (from the vocabulary).")
    incorrect: list[str] = Field(default_factory=list, description="Tags that were wrong for this item.")


class FeedbackRequestIn(BaseModel):
    items: list[FeedbackItemIn]


class ErrorOut(BaseModel):
    error: str
    field: str


def body_schema(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
