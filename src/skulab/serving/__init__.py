"""Use the winner: the best detector and recognizer as one MLflow pyfunc model.

- `predictor`: inference (detect, crop as the crop stage does, recognize, reject as `unknown`);
- `pyfunc`: the MLflow PythonModel around it, its request form, signature and input example;
- `shelf_model`: the file MLflow logs as the model (models from code);
- `build`: the `package` stage (choose the parts, prototypes, reject threshold, log, register, card);
- `predict`: the `skulab predict` command.
"""
