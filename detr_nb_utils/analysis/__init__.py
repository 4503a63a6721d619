"""Reading finished runs: bootstrap intervals, the comparison of the variants and its closing sentences, the object
queries, attention maps, cost. Never trains. Imports from models, data and training."""
