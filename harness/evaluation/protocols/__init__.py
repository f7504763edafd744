"""Evaluation protocols (see :mod:`.base`); the built-in ones are in :mod:`.builtin`."""

from harness.evaluation.protocols.base import (PROTOCOLS, AnyProtocol, EvalResult, Protocol, ProtocolConfig,
                                               TrainRecipe, check_learned_lr, correct_on, evaluate, new_network,
                                               protocol_config, register_protocol, test_correct, train_network)

__all__ = ["PROTOCOLS", "AnyProtocol", "EvalResult", "Protocol", "ProtocolConfig", "TrainRecipe",
           "check_learned_lr", "correct_on", "evaluate", "new_network", "protocol_config", "register_protocol",
           "test_correct", "train_network"]
