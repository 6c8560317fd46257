"""The long-lived worker of ``engine=fast``: a Ray actor that keeps the dataset and the ClientApp
resident and runs many virtual clients per call."""

from __future__ import annotations

import copy
import gc
import traceback
import warnings
from typing import TYPE_CHECKING, Any
from uuid import uuid4

if TYPE_CHECKING:  # Flower and numpy are imported where they are used: the driver imports this
    # module to create the actors, and their imports (about 0.4 s and 0.06-0.1 s) would delay
    # the actors' creation.
    from flwr.app import Context, Message


def to_wire(message: Message) -> None:
    """Turn the npy bytes of ``message``'s arrays into uint8 numpy views (no copy), in place.

    Ray pickles numpy arrays out of band, straight into its object store, while ``bytes`` are
    copied into the pickle first: a call returning 6 small CNNs ends about 2.7 ms sooner.
    :func:`from_wire` restores the bytes on the driver.
    """
    import numpy as np

    if not message.has_content():
        return
    for record in message.content.array_records.values():
        for arr in record.values():
            if isinstance(arr.data, bytes):
                arr.__dict__["data"] = np.frombuffer(arr.data, dtype=np.uint8)


def from_wire(message: Message) -> None:
    """Undo :func:`to_wire`: each array's data is ``bytes`` again, as Flower expects. The
    content gets fast record views (:class:`~fedsim.records.FastViews`) for the server."""
    import numpy as np

    from fedsim.records import FastViews

    if not message.has_content():
        return
    FastViews.adopt(message.content)
    for record in message.content.array_records.values():
        for arr in record.values():
            if isinstance(arr.data, np.ndarray):
                arr.__dict__["data"] = arr.data.tobytes()


#: The ClientApp side of ``engine.vectorize`` (:func:`clients.batched.train_many`): the train
#: messages of one call that can share a batched pass, trained together.
CLIENT_TRAIN_MANY = "clients.batched:train_many"


def _error_reply(message: Message, code: int, ex: BaseException) -> Message:
    from flwr.app import Error, Message

    reply = Message(Error(code=code, reason=f"{type(ex)}:<'{ex}'>"), reply_to=message)
    return reply


class ClientWorker:
    """Runs ``clients.app:app`` on batches of (message, context) pairs.

    :meth:`load` hands it the dataset shared through Ray's object store (``DatasetArrays``
    fields as numpy arrays, with root and download), preloaded so the app never reads it from disk.
    """

    def __init__(self) -> None:
        self._dataset: dict[str, Any] | None = None
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
        from fedsim.plugins import CLIENT_APP, load_object

        self._app = load_object(CLIENT_APP)
        self._train_many = load_object(CLIENT_TRAIN_MANY)
        self._ready = True

    def ping(self) -> bool:
        """Import the ClientApp and its dependencies."""
        from fedsim.plugins import CLIENT_APP, load_object

        load_object(CLIENT_APP)
        return True

    def load(self, dataset: dict[str, Any], run_config: dict[str, Any]) -> bool:
        """Take the dataset from the object store, build the client runtime (data, model,
        learner) and run one warm-up step, so that round 1 pays none of it."""
        import torch
        from flwr.app import Context, RecordDict

        gc.unfreeze()  # a worker kept for another run: what the last load froze may go
        self._dataset = dataset
        self._ready = False
        self._setup()
        from fedsim.plugins import CLIENT_RUNTIME, load_object

        rt = load_object(CLIENT_RUNTIME)(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
        )
        data = rt.data(0)
        usable = torch.nonzero(data.y != data.num_classes).flatten()[:2]  # open set: no unknown
        if len(usable) >= 2:  # one tiny training call warms up autograd, the optimizer and the
            # allocator; every real call reloads the weights it receives, so this changes nothing
            tiny = data.subset(usable)
            learner = copy.copy(rt.learner_for(0)[1])
            learner.epochs = 1
            learner.train(
                rt.model,
                tiny,
                device=rt.device,
                generator=torch.Generator().manual_seed(0),
                state={},
            )
        # What was built so far lives as long as the worker: keep full collections from
        # traversing it again and again during the rounds.
        gc.freeze()
        return True

    def run_batch(self, batch: list[tuple[Message, Context]]) -> list[tuple[Message, Context]]:
        """Handle each message with the ClientApp; an exception becomes an error reply. With
        ``engine.vectorize``, the train messages that can share a batched pass train together
        first (:func:`clients.batched.train_many`).

        The replies come back in wire form (:func:`to_wire`): apply :func:`from_wire` to each
        before use, as :class:`~fedsim.engine.grid.FastGrid` does."""
        from flwr.common.constant import ErrorCode

        self._setup()
        try:  # engine.vectorize: the messages that can share a batched pass (None: the others)
            grouped = self._train_many(batch)
        except Exception:
            traceback.print_exc()
            grouped = [None] * len(batch)
        out: list[tuple[Message, Context]] = []
        for (message, context), pre in zip(batch, grouped, strict=True):
            try:
                reply = pre if pre is not None else self._app(message=message, context=context)
            except Exception as ex:  # reported as Flower does: an error reply, the run goes on
                traceback.print_exc()
                reply = _error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ex)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            to_wire(reply)
            out.append((reply, context))
        return out
