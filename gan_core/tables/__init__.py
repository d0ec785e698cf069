"""Tables as a second kind of data: schema, reversible transforms, the row GAN, its training and sampling."""
