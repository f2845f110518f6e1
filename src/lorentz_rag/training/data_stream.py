"""The trainer's data: this rank's batches, epoch after epoch, with a resumable position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from lorentz_rag.data.collators import ContrastiveCollator, MLMCollator
from lorentz_rag.data.readers import IterableRows, ResumableSampler, RowDataset, open_dataset
from lorentz_rag.training.config import TrainConfig

__all__ = ["DataStream"]


class DataStream:
    """This rank's batches, epoch after epoch, with a position that a checkpoint can save and restore.

    Three kinds of source (``lorentz_rag.data.readers.open_dataset``): rows in memory (JSONL, Hugging Face
    datasets) ordered by a :class:`ResumableSampler`; streamed Hugging Face rows (``IterableRows``, resumed
    by skipping the consumed rows); MDS folders (streaming's ``StreamingDataset``, its own state).
    The position is what the *trainer* consumed (``samples_in_epoch``), not what a DataLoader with workers
    has prefetched.
    """

    def __init__(self, config: TrainConfig, model: nn.Module, rank: int, world_size: int) -> None:
        args, data = config.train_args, config.data_args
        kind = "mlm" if args.task == "mlm" else "contrastive"
        columns = (
            {"text": data.text_column}
            if kind == "mlm"
            else {
                "query": data.query_column,
                "document": data.document_column,
                "negatives": data.negatives_column,
            }
        )
        self.dataset = open_dataset(
            data.data_path,
            kind,
            format=data.data_format,
            split=data.split,
            rank=rank,
            world_size=world_size,
            streaming=data.streaming,
            max_rows=data.max_rows,
            columns=columns,
            mds_options={"batch_size": args.batch_size, "shuffle": data.shuffle, "seed": args.seed},
        )
        self.batch_size = args.batch_size
        self.world_size = world_size
        if args.task == "mlm":
            self.collator: Any = MLMCollator(
                model.tokenizer,
                max_length=args.max_seq_length or config.model_args.max_seq_length,
                mlm_probability=config.mlm_args.mlm_probability,
                mask_replace_prob=config.mlm_args.mask_replace_prob,
                random_replace_prob=config.mlm_args.random_replace_prob,
                seed=args.seed + 1000 * rank,
            )
        else:
            self.collator = ContrastiveCollator.from_model(model, num_negatives=args.num_negatives)
        self.sampler = None
        if isinstance(self.dataset, RowDataset):
            # open_dataset already gave this rank its share: the sampler shuffles within it.
            self.sampler = ResumableSampler(len(self.dataset), seed=args.seed, shuffle=data.shuffle)
        self.streamed = isinstance(self.dataset, IterableRows)
        self.loader = DataLoader(
            self.dataset,
            batch_size=args.batch_size,
            sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=args.num_workers,
            worker_init_fn=getattr(self.collator, "worker_init_fn", None),
            drop_last=True,
        )
        self.epoch = 0
        self.samples_in_epoch = 0

    def batches_per_epoch(self) -> int | None:
        """Batches per epoch on this rank (None for a stream of unknown length)."""
        if self.streamed:
            return None
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch}
        if self.sampler is not None:
            state["sampler"] = {**self.sampler.state_dict(self.samples_in_epoch), "epoch": self.epoch}
        elif not self.streamed:  # MDS: streaming counts samples over all ranks
            state["mds"] = self.dataset.state_dict(self.samples_in_epoch * self.world_size, False)
        if hasattr(self.collator, "state_dict"):
            state["collator"] = self.collator.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.samples_in_epoch = int(state["epoch"]), int(state["samples_in_epoch"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        elif self.streamed:
            self.dataset.resume_from(self.samples_in_epoch)
        else:
            self.dataset.load_state_dict(state["mds"])
        if "collator" in state:
            self.collator.load_state_dict(state["collator"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches forever; ``self.epoch`` / ``self.samples_in_epoch`` track what was handed out."""
        while True:
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            elif not self.streamed and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            resumed_mid_epoch, got_any = self.samples_in_epoch > 0, False
            for batch in self.loader:
                got_any = True
                self.samples_in_epoch += self.batch_size
                yield batch  # the collators return plain dicts (what TrainStep and DeepSpeed's engine take)
            if not got_any and not resumed_mid_epoch:
                raise ValueError(
                    f"the training data gave no batch of {self.batch_size} rows in epoch {self.epoch}"
                )
            self.epoch += 1
            self.samples_in_epoch = 0
            if self.streamed:
                self.dataset.resume_from(0)
