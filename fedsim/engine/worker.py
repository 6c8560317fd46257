"""The long-lived worker of ``engine=fast``: a Ray actor that keeps the dataset and the ClientApp
resident and runs many virtual clients per call."""

from __future__ import annotations

import traceback
import warnings
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message


def _error_reply(message: Message, code: int, ex: BaseException) -> Message:
    reply = Message(Error(code=code, reason=f"{type(ex)}:<'{ex}'>"), reply_to=message)
    return reply


class ClientWorker:
    """Runs ``clients.app:app`` on batches of (message, context) pairs.

    Parameters
    ----------
    dataset
        ``(DatasetArrays fields as numpy arrays, root, download)``: the dataset shared through
        Ray's object store, preloaded so the app never reads it from disk.
    """

    def __init__(self, dataset: dict[str, Any] | None = None) -> None:
        self._dataset = dataset
        self._ready = False

    def _setup(self) -> None:
        if self._ready:
            return
        if self._dataset is not None:
            import torch

            from fedsim.data import DatasetArrays, preload_dataset

            fields = dict(self._dataset["fields"])
            with warnings.catch_warnings():  # arrays from the object store are read-only
                warnings.simplefilter("ignore", UserWarning)
                for key in ("train_x", "train_y", "test_x", "test_y"):
                    fields[key] = torch.from_numpy(fields[key])
            preload_dataset(
                DatasetArrays(**fields),
                root=self._dataset["root"],
                download=self._dataset["download"],
            )
        from clients.app import app

        self._app = app
        self._ready = True

    def ping(self) -> bool:
        """Import everything (so that the first round does not pay for it)."""
        self._setup()
        return True

    def run_batch(self, batch: list[tuple[Message, Context]]) -> list[tuple[Message, Context]]:
        """Handle each message with the ClientApp; an exception becomes an error reply."""
        from flwr.common.constant import ErrorCode

        self._setup()
        out: list[tuple[Message, Context]] = []
        for message, context in batch:
            try:
                reply = self._app(message=message, context=context)
            except Exception as ex:  # reported as Flower does: an error reply, the run goes on
                traceback.print_exc()
                reply = _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ex)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            out.append((reply, context))
        return out
