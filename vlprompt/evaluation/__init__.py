from .evaluator import EVALUATOR_REGISTRY, Classification, EvaluatorBase, build_evaluator, macro_f1
