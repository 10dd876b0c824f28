"""The packaged model's entry file (MLflow "models from code"): the package stage logs this file as
the pyfunc model, with the skulab package as its code and the shelf files as its artifacts."""

from mlflow.models import set_model

from skulab.serving.pyfunc import ShelfModel

set_model(ShelfModel())
