"""The private Lightning attributes the trainer still relies on, where no public API does the job
(requirements.txt pins the Lightning versions that have them). A Lightning release that drops one
fails here, naming it, before it breaks a resume or a signal stop in a user's run."""

import lightning as L

# (where we use it, the path from the Trainer, why)
RELIED_ON = [
    ("training/safety.py StopOnSignal", "_signal_connector.received_sigterm",
     "holds back a SIGTERM that arrives mid-step, and raises it again once the step is complete"),
    ("training/safety.py StopOnSignal", "fit_loop.epoch_loop._batches_that_stepped",
     "the loggers' step count, set back for the checkpoint of an abandoned step"),
    ("data/datamodule.py load_state_dict", "fit_loop._combined_loader",
     "dropped so that DeepSpeed/FSDP (restore after setup) rebuild the train loader at the resumed position"),
]


def _lookup(trainer, path: str):
    value = trainer
    for name in path.split("."):
        value = getattr(value, name)
    return value


def test_private_lightning_attributes_we_rely_on_exist():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for user, path, why in RELIED_ON:
        try:
            _lookup(trainer, path)
        except AttributeError:
            raise AssertionError(f"Lightning {L.__version__} has no trainer.{path}, which {user} uses ({why}): "
                                 "install a Lightning version within requirements.txt's pin, or port that code"
                                 ) from None
    # the flag we set is the one Lightning's public property (and its loop) reads
    trainer._signal_connector.received_sigterm = True
    assert trainer.received_sigterm
    # the loggers' step count is what a checkpoint saves of the epoch loop
    assert "_batches_that_stepped" in trainer.fit_loop.epoch_loop.state_dict()["state_dict"]
