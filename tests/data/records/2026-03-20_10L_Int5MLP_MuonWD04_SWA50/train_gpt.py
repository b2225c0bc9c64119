# stand-in: the record's code is not copied here
