"""Evaluation protocols (see :mod:`.base`); the built-in ones are in :mod:`.builtin` (the protocol
registry imports every module of this package, so a new protocol may also be a new file here)."""

from harness.evaluation.protocols.base import (PROTOCOLS, TEST_SELECTED_LABEL, AnyProtocol, EvalResult, Protocol,
                                               ProtocolConfig, TrainRecipe, best_on_test, check_learned_lr,
                                               class_sampled_rows, correct_on, evaluate, new_network, protocol_config,
                                               register_protocol, test_correct, train_network)

__all__ = ["PROTOCOLS", "TEST_SELECTED_LABEL", "AnyProtocol", "EvalResult", "Protocol", "ProtocolConfig",
           "TrainRecipe", "best_on_test", "check_learned_lr", "class_sampled_rows", "correct_on", "evaluate",
           "new_network", "protocol_config", "register_protocol", "test_correct", "train_network"]
