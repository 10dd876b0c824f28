"""DVC stage `package`: the best detector and recognizer cells as one MLflow pyfunc model, registered
under package.model_name with the alias package.alias moved to it; writes models/package/model_card.md."""

import argparse

from skulab.errors import exit_on_user_error
from skulab.params import load_params
from skulab.serving.build import package_stage


@exit_on_user_error
def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(sections=("mlflow", "detector", "crop", "package"))
    package_stage(params)


if __name__ == "__main__":
    main()
